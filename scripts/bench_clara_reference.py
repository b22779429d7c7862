#!/usr/bin/env python3
"""The work clara_bench times, done with transformers + peft as upstream CLaRa does it
(benchmarking only; never part of the product): a Mistral with random weights from a config.json,
the CLaRa tokens added to the fixture tokenizer, LoRA adapters (r 16, alpha 32, all-linear)
named as upstream's, and then
  compress  the encoder adapter's forward with output_hidden_states, memory positions gathered
  train     stage 1: compression with gradient, splicing, decoder CE + 0.1 MSE, backward, gradient
            clipping, AdamW over both adapters and the embedding matrix (upstream trains the
            whole matrix with a hook that keeps the memory rows' gradient)
  answer    spliced inputs_embeds, generate(): prefill (one new token) and decode
Prints one JSON line per measurement, with the same fields as clara_bench.

Usage: bench_clara_reference.py --config CONFIG.json --tokenizer DIR [--dtype float32|bfloat16]
       [--threads T] [--docs N] [--doc-tokens T] [--compr-rate R] [--top-k K] [--batch B]
       [--new-tokens N] [--repeats R] [--what compress,train,answer]
"""
import argparse
import json
import resource
import time

import torch
import transformers
from peft import LoraConfig
from transformers import AutoTokenizer, MistralConfig, MistralForCausalLM

WORDS = ["the", "river", "license", "program", "city", "north", "software", "free", "copy", "flows", "through",
         "keeps", "changed", "version", "shared", "users", "document", "question", "answer", "memory", "alps", "bank",
         "modify", "study"]


CALLS = [0]


def text(_rng, words):
    # clara_bench's synthetic_text: the k-th call's words by the same formula.
    k = CALLS[0]
    CALLS[0] += 1
    return " ".join(WORDS[(k * 31 + i * 7 + (i * i) % 5) % 24] for i in range(words)) + "."


def best_of(fn, repeats):
    fn()
    best = 1e30
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--config", required=True)
    p.add_argument("--tokenizer", required=True)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--docs", type=int, default=32)
    p.add_argument("--doc-tokens", type=int, default=256)
    p.add_argument("--compr-rate", type=int, default=32)
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--what", default="compress,train,answer")
    a = p.parse_args()
    if a.threads > 0:
        torch.set_num_threads(a.threads)
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[a.dtype]
    torch.manual_seed(0)
    cfg = json.load(open(a.config))
    model = MistralForCausalLM(MistralConfig(**{k: v for k, v in cfg.items() if k != "architectures"})).to(dtype)
    model.config._attn_implementation = "sdpa"
    n = a.doc_tokens // a.compr_rate
    tok = AutoTokenizer.from_pretrained(a.tokenizer)
    mem = [f"<MEM{i}>" for i in range(n)]
    tok.add_special_tokens({"additional_special_tokens": mem + ["<AE>", "<ENC>", "<SEP>"]})
    tok.pad_token_id = tok.bos_token_id
    tok.padding_side = "left"
    mem_ids = tok.convert_tokens_to_ids(mem)
    lora = LoraConfig(task_type="CAUSAL_LM", r=16, lora_alpha=32, target_modules="all-linear", lora_dropout=0.0)
    model.add_adapter(lora, adapter_name="encoder_adapter")
    model.add_adapter(lora, adapter_name="decoder_adapter")
    for prm in model.parameters():
        prm.data = prm.data.to(dtype)
    rng = None
    docs = [text(rng, a.doc_tokens) for _ in range(a.docs)]
    what = a.what.split(",")

    def line(bench):
        return {"bench": bench, "implementation": f"transformers {transformers.__version__} + peft", "dtype": a.dtype,
                "threads": torch.get_num_threads()}

    def encoder_inputs(texts):
        enc = tok([f"<ENC><s>{t}</s>" for t in texts], add_special_tokens=False, padding="max_length", truncation=True,
                  max_length=a.doc_tokens + 3, return_tensors="pt")
        ids = torch.cat([enc.input_ids, torch.tensor([mem_ids] * len(texts))], 1)
        mask = torch.cat([enc.attention_mask, torch.ones(len(texts), n, dtype=torch.long)], 1)
        return ids, mask

    def compress(texts, grad=False):
        model.set_adapter("encoder_adapter")
        outs, mses = [], []
        for i in range(0, len(texts), a.batch):
            ids, mask = encoder_inputs(texts[i:i + a.batch])
            with torch.set_grad_enabled(grad):
                h = model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states[-1]
            is_mem = torch.isin(ids, torch.tensor(mem_ids))
            outs.append(h[is_mem].view(ids.size(0), n, -1))
            mem_mean = (h * (is_mem & mask.bool()).unsqueeze(-1)).sum(1) / n
            doc_w = (~is_mem & mask.bool()).unsqueeze(-1)
            mses.append(((h * doc_w).sum(1) / doc_w.sum(1) - mem_mean).pow(2).mean())
        return torch.cat(outs), torch.stack(mses).mean()

    def splice(prompts, memory):
        batch = tok(prompts, add_special_tokens=False, padding="longest", return_tensors="pt")
        emb = model.get_input_embeddings()(batch.input_ids)
        k = memory.size(0) // len(prompts)
        for b in range(len(prompts)):
            p0 = int((batch.input_ids[b] == mem_ids[0]).nonzero()[0])
            for j in range(k):
                emb[b, p0 + j * (n + 1):p0 + j * (n + 1) + n] = memory[b * k + j]
        return batch, emb

    slots = lambda k: ("".join(mem) + "<SEP>") * k
    if "compress" in what:
        s = best_of(lambda: compress(docs), a.repeats)
        print(json.dumps({**line("compress"), "documents": len(docs), "doc_tokens": a.doc_tokens, "memory_tokens": n,
                          "batch": a.batch, "seconds": s, "documents_per_s": len(docs) / s, "peak_rss_mb": peak_rss_mb()}),
              flush=True)
    if "train" in what:
        system = "You are a helpful assistant. Given a document, your task is to generate some single questions to cover all key information of the document and answer them sequentially."
        rows = []
        for i in range(a.batch):
            questions = [text(rng, 8), text(rng, 8)]
            answers = [text(rng, 12), text(rng, 12)]
            qa = "\n".join(f"Question: {q}\nAnswer: {ans}" for q, ans in zip(questions, answers))
            msgs = [{"role": "system", "content": system}, {"role": "user", "content": "Background:\n" + slots(1)}]
            prompt = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
            full = tok.apply_chat_template(msgs + [{"role": "assistant", "content": qa}], tokenize=False)
            rows.append((docs[i % len(docs)], prompt, full))
        model.train()
        model.set_adapter(["encoder_adapter", "decoder_adapter"])
        emb_w = model.get_input_embeddings().weight
        emb_w.requires_grad_(True)
        keep = torch.zeros(emb_w.size(0), 1, dtype=emb_w.dtype)
        keep[mem_ids] = 1
        emb_w.register_hook(lambda g: g * keep)
        params = [q for q in model.parameters() if q.requires_grad]
        opt = torch.optim.AdamW(params, lr=1e-4, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.0)

        def step():
            opt.zero_grad()
            memory, mse = compress([r[0] for r in rows], grad=True)
            model.set_adapter("decoder_adapter")
            batch, emb = splice([r[2] for r in rows], memory)
            labels = batch.input_ids.clone()
            for b, r in enumerate(rows):
                first = int((batch.attention_mask[b] == 0).sum())
                labels[b, :first + len(tok(r[1], add_special_tokens=False).input_ids)] = -100
            loss = model(inputs_embeds=emb, attention_mask=batch.attention_mask, labels=labels).loss + 0.1 * mse
            model.set_adapter(["encoder_adapter", "decoder_adapter"])
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            return batch.input_ids.size(1)

        s = best_of(step, a.repeats)
        print(json.dumps({**line("train_step_stage1"), "micro_batch": a.batch, "decoder_tokens": step(),
                          "ms_per_step": 1000 * s, "peak_rss_mb": peak_rss_mb()}), flush=True)
        model.eval()
    if "answer" in what:
        system = "You are a helpful assistant. Your task is to extract relevant information from provided documents and to answer to questions as briefly as possible."
        with torch.inference_mode():
            memory, _ = compress(docs[:a.top_k])
            model.set_adapter("decoder_adapter")
            best = None
            for r in range(a.repeats + 1):
                msgs = [{"role": "system", "content": system},
                        {"role": "user", "content": "Background:\n" + slots(a.top_k) + "\n\nQuestion:" + text(rng, 10) + "?"}]
                prompt = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
                batch, emb = splice([prompt], memory)
                t0 = time.perf_counter()
                model.generate(inputs_embeds=emb, attention_mask=batch.attention_mask, max_new_tokens=1, do_sample=False,
                               pad_token_id=tok.pad_token_id)
                prefill = time.perf_counter() - t0
                t0 = time.perf_counter()
                model.generate(inputs_embeds=emb, attention_mask=batch.attention_mask, max_new_tokens=a.new_tokens,
                               min_new_tokens=a.new_tokens, do_sample=False, pad_token_id=tok.pad_token_id)
                total = time.perf_counter() - t0
                if r > 0 and (best is None or total < best[1]):
                    best = (prefill, total)
            prefill, total = best
            print(json.dumps({**line("answer"), "documents": a.top_k, "new_tokens": a.new_tokens, "prefill_ms": 1000 * prefill,
                              "decode_tokens_per_s": (a.new_tokens - 1) / max(total - prefill, 1e-9), "answer_ms": 1000 * total,
                              "peak_rss_mb": peak_rss_mb()}), flush=True)


if __name__ == "__main__":
    main()
