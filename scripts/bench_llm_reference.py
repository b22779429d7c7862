#!/usr/bin/env python3
"""Reference counterpart of llm_bench: the same measurements with Hugging Face transformers.

Measures a MistralForCausalLM (transformers, attn_implementation="sdpa") with the definitions that
src/tools/llm_bench.cpp uses, and prints one JSON line with the same keys, plus "implementation":

  prefill_tokens_per_s           B*T / best-of-R time of one forward of random ids [B,T] (ids in
                                 [3, vocab), use_cache=True, logits of the last position only, under
                                 torch.inference_mode), after one warm-up.
  decode_tokens_per_s_cached     B*(N-1) / best-of-R decode time of greedy generate() of N new tokens
                                 with the KV cache, after one warm-up run. The decode time runs from
                                 the moment the first new token is chosen (its cost is the prompt's
                                 forward) to the moment the N-th is chosen, timed with a streamer
                                 (generate calls streamer.put once per chosen token). EOS never stops
                                 or alters generation. --decode-timing difference instead uses
                                 best(t_generate(N)) - best(t_generate(1)).
  decode_tokens_per_s_recompute  the same with use_cache=False (every step recomputes the sequence).
  peak_rss_mb, rss_after_load_mb getrusage(RUSAGE_SELF).ru_maxrss in MiB (the Python interpreter,
                                 torch and transformers included).

transformers is not a project dependency; install it only to benchmark, e.g.
  /opt/hrmclara/venv/bin/pip install 'transformers==4.56.2'

Usage: bench_llm_reference.py (--model DIR | --config config.json) [--dtype D] [--batch B]
           [--prompt-tokens T] [--new-tokens N] [--repeats R] [--threads T] [--device cpu|cuda]
"""
import argparse
import json
import os
import resource
import sys
import time


def peak_rss_mb():
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 1048576.0 if sys.platform == "darwin" else rss / 1024.0


def usable_cores():
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def parse_args(argv):
    p = argparse.ArgumentParser(description="transformers reference for llm_bench (prints one JSON line)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="Hugging Face model directory to load")
    src.add_argument("--config", help="a config.json: the model gets random weights (seeded)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--batch", type=int, default=1, help="sequences per batch")
    p.add_argument("--prompt-tokens", type=int, default=128, help="prompt length")
    p.add_argument("--new-tokens", type=int, default=32, help="tokens generated per sequence")
    p.add_argument("--repeats", type=int, default=3, help="timed repetitions (the best is reported)")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0: every usable core, as llm_bench)")
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda[:i]")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights of --config")
    p.add_argument("--skip-recompute", action="store_true", help="do not time generation without the KV cache")
    p.add_argument("--decode-timing", default="streamer", choices=["streamer", "difference"],
                   help="streamer: per-token timestamps inside one generate() (default); "
                        "difference: best t(N new tokens) - best t(1 new token)")
    a = p.parse_args(argv)
    if a.batch < 1 or a.prompt_tokens < 1 or a.repeats < 1 or a.new_tokens < 2:
        p.error("--batch, --prompt-tokens and --repeats must be >= 1 and --new-tokens >= 2")
    return a


def main(argv):
    a = parse_args(argv)
    import torch

    try:
        import transformers
        from transformers import AutoConfig, GenerationConfig, MistralForCausalLM
        from transformers.generation.streamers import BaseStreamer
    except ImportError as e:
        print(f"bench_llm_reference: transformers is not importable ({e}); install it for benchmarking with "
              f"`{sys.executable} -m pip install 'transformers==4.56.2'`", file=sys.stderr)
        return 2
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()

    threads = a.threads if a.threads > 0 else usable_cores()
    torch.set_num_threads(threads)
    device = torch.device(a.device)
    dtype = getattr(torch, a.dtype)
    # transformers 4.56 renamed from_pretrained's torch_dtype to dtype (the old name warns).
    version = tuple(int(x) for x in transformers.__version__.split(".")[:2] if x.isdigit())
    dtype_kw = "dtype" if version >= (4, 56) else "torch_dtype"

    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)

    t_load = time.perf_counter()
    if a.model:
        model = MistralForCausalLM.from_pretrained(a.model, attn_implementation="sdpa", **{dtype_kw: dtype})
    else:
        config = AutoConfig.from_pretrained(a.config)
        config._attn_implementation = "sdpa"
        torch.manual_seed(a.seed)
        # Built directly in the target dtype (no float32 copy first), as llm_bench's random model.
        model = MistralForCausalLM._from_config(config, **{dtype_kw: dtype})
    model = model.to(device).eval()
    # generate() fills an unset eos_token_id from the model's generation config: clear it there too.
    model.generation_config.eos_token_id = None
    sync()
    load_s = time.perf_counter() - t_load
    rss_after_load = peak_rss_mb()
    vocab = model.config.vocab_size
    parameters = sum(p.numel() for p in model.parameters())

    B, T, N, R = a.batch, a.prompt_tokens, a.new_tokens, a.repeats
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(3, vocab, (B, T), generator=gen, dtype=torch.long).to(device)
    mask = torch.ones_like(ids)

    def best_of(f):
        f()  # warm-up
        best = float("inf")
        for _ in range(R):
            sync()
            t0 = time.perf_counter()
            f()
            sync()
            best = min(best, time.perf_counter() - t0)
        return best

    def prefill():
        with torch.inference_mode():
            model(input_ids=ids, use_cache=True, logits_to_keep=1)

    prefill_s = best_of(prefill)

    class Clock(BaseStreamer):
        """Records the time of each put(): the prompt, then every chosen token."""

        def __init__(self):
            self.times = []

        def put(self, value):
            self.times.append(time.perf_counter())

        def end(self):
            pass

    def run_generate(new_tokens, use_cache, streamer=None):
        # A fresh config: greedy, exactly new_tokens tokens, no EOS (so nothing stops or masks EOS,
        # as llm_bench's stop_at_eos = false), no pad/EOS warnings.
        cfg = GenerationConfig(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                               num_beams=1, use_cache=use_cache, eos_token_id=None, bos_token_id=None,
                               pad_token_id=0, temperature=None, top_p=None, top_k=None)
        with torch.inference_mode():
            out = model.generate(input_ids=ids, attention_mask=mask, generation_config=cfg, streamer=streamer,
                                 eos_token_id=None)
        if out.shape != (B, T + new_tokens):
            raise RuntimeError(f"generate returned shape {tuple(out.shape)}, expected {(B, T + new_tokens)}")
        return out

    def decode_rate(use_cache):
        if a.decode_timing == "difference":
            t_n = best_of(lambda: run_generate(N, use_cache))
            t_1 = best_of(lambda: run_generate(1, use_cache))
            best = t_n - t_1
        else:
            best = float("inf")
            for r in range(R + 1):  # run 0 is the warm-up
                clock = Clock()
                run_generate(N, use_cache, clock)
                if len(clock.times) != N + 1:
                    raise RuntimeError(f"streamer saw {len(clock.times)} puts, expected {N + 1}")
                if r > 0:
                    best = min(best, clock.times[-1] - clock.times[1])
        return B * (N - 1) / best if best > 0 else float("nan")

    cached = decode_rate(True)
    recompute = 0.0 if a.skip_recompute else decode_rate(False)

    line = {
        "model": a.model if a.model else a.config,
        "parameters": parameters,
        "dtype": a.dtype,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "batch": B,
        "prompt_tokens": T,
        "new_tokens": N,
        "load_s": load_s,
        "prefill_tokens_per_s": B * T / prefill_s,
        "decode_tokens_per_s_cached": cached,
        "decode_tokens_per_s_recompute": recompute,
        "rss_after_load_mb": rss_after_load,
        "peak_rss_mb": peak_rss_mb(),
        "implementation": f"transformers {transformers.__version__}",
    }
    print(json.dumps(line), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
