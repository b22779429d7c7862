"""Writes tests/fixtures/tokenizer-cases/expected.json: what Hugging Face transformers' tokenizer
does with the tokenizer configurations the C++ tokenizer tests (tests/llm/test_llm_tokenizer.cpp,
tests/llm/test_llm_model.cpp) build.

Every configuration is a model folder holding tests/fixtures/clara-reference/tokenizer.model plus
the files listed under its "files" (written byte for byte as they are stored in the JSON, so the
C++ tests write the very same files), loaded with transformers.AutoTokenizer.from_pretrained --
the fast tokenizer converted from tokenizer.model, the reference semantics of
tests/fixtures/clara-reference/README.md. A folder without tokenizer_config.json's
"tokenizer_class" also gets a config.json {"model_type": "mistral"} (as a real model folder has
one) so that AutoTokenizer picks LlamaTokenizerFast; the C++ tokenizer does not read config.json.

Recorded per configuration: the vocabulary size (len(tokenizer)), the bos/eos/unk/pad ids, the
added tokens with their flags, the special ids, encode(text) with and without special tokens,
decode(ids) with and without skip_special_tokens, and apply_chat_template(tokenize=False) with
and without add_generation_prompt. Where transformers refuses (loading a configuration, rendering
a conversation) the entry holds "error" instead: the exception's type and message.

The script needs transformers (4.56.2), tokenizers, sentencepiece, protobuf and jinja2 in the
set-up's venv; they are needed only here, never by the product or the tests:
    /opt/hrmclara/venv/bin/pip install transformers==4.56.2 protobuf
    /opt/hrmclara/venv/bin/python tests/scripts/make_tokenizer_cases.py
"""
import json
import os
import shutil
import sys
import tempfile

import jinja2
import sentencepiece
import tokenizers
import transformers
from transformers import AutoTokenizer
from transformers.utils import logging as hf_logging

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURES = os.path.normpath(os.path.join(HERE, "..", "fixtures"))
REFERENCE = os.path.join(FIXTURES, "clara-reference")
OUT_DIR = os.path.join(FIXTURES, "tokenizer-cases")
SPACE = "\u2581"  # SentencePiece's space marker

hf_logging.set_verbosity_error()

with open(os.path.join(REFERENCE, "tokenizer_expected.json"), encoding="utf-8") as f:
    REFERENCE_CASES = json.load(f)
N = REFERENCE_CASES["spm_vocab_size"]  # 640: the first id after the SentencePiece pieces
CLARA_TOKENS = [t["content"] for t in REFERENCE_CASES["added_tokens"]]
with open(os.path.join(REFERENCE, "tokenizer_config.json"), encoding="utf-8") as f:
    MISTRAL_TEMPLATE = json.load(f)["chat_template"]
CHATML_TEMPLATE = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>{% endfor %}"


def error_text(e):
    return f"{type(e).__name__}: {e}"


# ---- the configurations ------------------------------------------------------------------------

# tests/llm/test_llm_tokenizer.cpp, StripFlagsAndSpecialFlagsFromTokenizerConfig (as it wrote it).
STRIP_CONFIG = """{
    "added_tokens_decoder": {
      "%d": {"content": "<L>", "lstrip": true, "rstrip": false, "special": true},
      "%d": {"content": "<R>", "lstrip": false, "rstrip": true, "special": false},
      "%d": {"content": "<LR>", "lstrip": true, "rstrip": true, "special": true},
      "2": {"content": "</s>", "lstrip": false, "rstrip": true, "special": true}
    }}""" % (N, N + 1, N + 2)

# AddedTokensJsonAndSpecialTokensMap.
MAPS_ADDED = '{"<pad>": %d, "<plain>": %d}' % (N, N + 1)
MAPS_MAP = """{"pad_token": {"content": "<pad>", "lstrip": false},
                              "eos_token": "<eot>",
                              "additional_special_tokens": ["<X>", {"content": "<Y>"}, "<s>"]}"""
MAPS_CONFIG = '{"eos_token": "</s>", "add_bos_token": false, "add_eos_token": true}'

MISTRAL_CONFIG_TEXT = json.dumps({"chat_template": MISTRAL_TEMPLATE})

# Texts for the plain reference tokenizer (clara-reference as it is): special tokens next to each
# other, whitespace of every kind around them (no strip flags: it stays in the text), empty and
# space-only texts, text that already holds the space marker.
REFERENCE_TEXTS = [
    "Hello",
    "",
    " ",
    "  ",
    "\n",
    "<s></s><unk>",
    "<s> </s>",
    " <s> ",
    "<s>\n\n</s>",
    "a\u00a0<s>\u3000b",
    "</s>x",
    "x<s>",
    "<s><s>Hello",
    SPACE + "x",
    "x" + SPACE + " y",
    "<s> [INST] q [/INST] r</s>",
]

# Byte-fallback runs: valid UTF-8, truncated, mixed with a plain byte, ended by a piece, overlong,
# a surrogate, above U+10FFFF, a leading space byte (stripped once), special tokens in front.
BYTE_RUNS = [
    ["<0xE4>", "<0xB8>", "<0x96>"],
    ["<0xE4>", "<0xB8>"],
    ["<0x41>", "<0xE4>", "<0xB8>"],
    ["<0xE4>", SPACE, "<0x41>"],
    ["<0xC0>", "<0x80>"],
    ["<0xED>", "<0xA0>", "<0x80>"],
    ["<0xF4>", "<0x90>", "<0x80>", "<0x80>"],
    ["<0x20>", "<0x41>"],
    [SPACE, SPACE, "<0x41>"],
    ["<0xE4>", "<0xB8>", "<0x96>", "<0xE4>"],
    ["<s>", SPACE, "<0x41>"],
    ["<s>", "<0x20>"],
    ["<s>", "<0xE4>", "</s>", "<0xB8>", "<0x96>"],
    [SPACE + "a", "<unk>", SPACE + "b"],
]

# Conversations for the reference template: multi-turn with and without a system message, ending
# on either role, a system message alone, special text inside the content, and the conversations
# the template refuses.
CONVERSATIONS = [
    [["system", "S"], ["user", "a"], ["assistant", "b"], ["user", "c"]],
    [["system", "S"], ["user", "a"], ["assistant", "b"], ["user", "c"], ["assistant", "d"]],
    [["user", "a"]],
    [["user", "q"], ["assistant", "r"]],
    [["user", "a"], ["assistant", "b"], ["user", "c"], ["assistant", "d"]],
    [["system", "Be brief.\nReally."], ["user", " spaced  "], ["assistant", "<s>x</s>"]],
    [["system", "S"]],
    [["user", ""], ["assistant", ""]],
    [],
    [["user", "a"], ["user", "b"]],
    [["assistant", "a"]],
    [["system", "s"], ["assistant", "a"], ["user", "b"]],
    [["user", "a"], ["system", "s"]],
    [["tool", "a"]],
]
SHORT_CONVERSATIONS = [[["user", "q"], ["assistant", "r"]], [["system", "S"], ["user", "q"]]]

STRIP_TEXTS = [
    "a  <L> b",
    "a <R> \t b",
    "a\n<LR>\n b",
    "  <L>",
    "a\u00a0<LR>\u3000b",
    "a</s>  b",
    "<LR><L>",
    "a\u2003<L>b",
    "<R>\u00a0b",
    "a \u3000 <LR> \t\n b",
    "<L><L>",
    "<L> <L>",
    "a <L>",
    "\u3000<L>\u3000",
    "<R>",
    " <R>",
    "<R> <R>",
    "<R><R>",
    "a <R>",
    "a<R>b",
    "a<R> b",
    "x <R> y",
    "ab <R> cd",
    "a\t<R>",
    "a  <R>",
    "<LR>",
    "  ",
    "a</s>\n\nb",
    "</s> </s>",
    "<s> <L> </s> <R> x",
]

MAPS_TEXTS = [
    "x<pad><plain>",
    "x<pad><plain><X>",
    "a <plain> b",
    "<plain>",
    "<plain><plain>",
    "x <pad> y",
    "<X><Y><s>",
    "<eot>",
    "a<eot>b",
    "",
    " ",
]

NONLEGACY_TEXTS = [c["text"] for c in REFERENCE_CASES["cases"] if len(c["segments"]) == 1] + [
    "<s>Hello",
    "<s> Hello",
    " Hello  x",
    "a </s> b",
    "a<s>b",
    "Hello<s>",
    "<s><s>",
    "\n<s>\n",
    "",
    " ",
    SPACE + "x",
    "<s>" + SPACE + "x",
]

CONFIGS = [
    # The fixture's own folder, and it with CLaRa's tokens added the way CLaRa adds them.
    {"name": "reference", "dir": "clara-reference", "texts": REFERENCE_TEXTS, "pieces": BYTE_RUNS,
     "conversations": CONVERSATIONS},
    {"name": "clara", "dir": "clara-reference", "add_special_tokens": CLARA_TOKENS,
     "texts": [c["text"] for c in REFERENCE_CASES["cases"]] + ["<MEM0> <SEP>", "<ENC> x <AE>"],
     "pieces": [["<MEM0>", SPACE + "a", "<SEP>", "<0x0A>"]], "decode_encoded": 0},
    {"name": "strip", "files": {"tokenizer_config.json": STRIP_CONFIG}, "texts": STRIP_TEXTS,
     "pieces": [["<L>"], ["<R>"], ["<LR>"], ["<L>", "<R>", "<LR>"], [SPACE + "a", "<R>", SPACE + "b"],
                ["<R>", SPACE, "<0x41>"], ["<L>", "</s>", "<R>"]]},
    {"name": "maps", "files": {"tokenizer_config.json": MAPS_CONFIG, "added_tokens.json": MAPS_ADDED,
                               "special_tokens_map.json": MAPS_MAP},
     "texts": MAPS_TEXTS,
     "pieces": [["<pad>", "<plain>", "<eot>", "<X>", "<Y>", "</s>", "<s>"], [SPACE, "x", "<plain>", SPACE]]},
    # With added_tokens_decoder in tokenizer_config.json, transformers reads neither
    # special_tokens_map.json nor added_tokens.json.
    {"name": "decoder_and_map",
     "files": {"tokenizer_config.json": '{"eos_token": "</s>", "added_tokens_decoder": {"%d": {"content": "<pad>", "special": true}}}' % N,
               "special_tokens_map.json": '{"eos_token": "<eot>", "pad_token": "<pad>", "additional_special_tokens": ["<X>"]}',
               "added_tokens.json": '{"<plain>": %d}' % (N + 1)},
     "texts": ["a<pad><plain><X><eot>"], "pieces": [["<pad>", SPACE + "a"]]},
    # Named special tokens missing from the vocabulary: a string; a serialized AddedToken (whose
    # "normalized" defaults to true); a plain object, which transformers refuses in
    # tokenizer_config.json (special_tokens_map.json accepts it).
    {"name": "eot", "files": {"tokenizer_config.json": '{"eos_token": "<eot>"}'},
     "texts": ["a<eot>", "a <eot> b", "<eot>"], "pieces": [["<eot>"]]},
    {"name": "eot_addedtoken", "files": {"tokenizer_config.json": '{"eos_token": {"__type": "AddedToken", "content": "<eot>"}}'},
     "texts": ["a<eot>", "a <eot> b", "<eot>", "<eot><eot>", "a\t<eot>"], "pieces": [["<eot>"]]},
    {"name": "eot_addedtoken_flags",
     "files": {"tokenizer_config.json": '{"eos_token": {"__type": "AddedToken", "content": "<eot>", "lstrip": true, "rstrip": true, "normalized": false}}'},
     "texts": ["a <eot> b", "a\t<eot>\tb"]},
    {"name": "eot_object", "files": {"tokenizer_config.json": '{"eos_token": {"content": "<eot>"}}'}},
    {"name": "extra_object", "files": {"tokenizer_config.json": '{"additional_special_tokens": ["<A>", {"content": "<B>"}]}'}},
    {"name": "extra_addedtoken",
     "files": {"tokenizer_config.json": '{"additional_special_tokens": ["<A>", {"__type": "AddedToken", "content": "<B>"}]}'},
     "texts": ["a <A> b", "a <B> b", "<A><B>"]},
    {"name": "nonlegacy", "files": {"tokenizer_config.json": '{"legacy": false}'}, "texts": NONLEGACY_TEXTS,
     "pieces": [[SPACE + "a", "<s>", "H"]]},
    {"name": "nonlegacy_strip", "files": {"tokenizer_config.json": STRIP_CONFIG[:-1] + ', "legacy": false}'},
     "texts": ["a <R> b", "<R> x", "a  <L> b", "x<R>y", " <LR> "]},
    # Decoding runs every token, added ones too, through the decoder chain (Replace, ByteFallback,
    # Fuse, Strip); a named special token that is a SentencePiece piece keeps its id.
    {"name": "decoder_chain", "files": {"tokenizer_config.json": '{"additional_special_tokens": ["<\u2581>", "<0x41>", "x y"]}'},
     "texts": ["a<\u2581>b", "<0x41>", "a x y b"],
     "pieces": [["<\u2581>"], ["<0x41>"], ["<0xE4>", "<0xB8>", "<0x41>", "<0x96>"], ["<0x41>", SPACE + "a"], ["<0xE4>", "x y"]]},
    # Where the chat template comes from.
    {"name": "chat_none", "files": {"tokenizer_config.json": "{}"}, "conversations": SHORT_CONVERSATIONS},
    {"name": "chat_bare", "files": {}, "conversations": SHORT_CONVERSATIONS},
    {"name": "chat_jinja", "files": {"chat_template.jinja": MISTRAL_TEMPLATE}, "conversations": SHORT_CONVERSATIONS},
    {"name": "chat_named",
     "files": {"tokenizer_config.json": json.dumps({"chat_template": [{"name": "tool_use", "template": "{{ tools }}"},
                                                                      {"name": "default", "template": MISTRAL_TEMPLATE}]})},
     "conversations": SHORT_CONVERSATIONS},
    {"name": "chat_jinja_beats_config",
     "files": {"tokenizer_config.json": json.dumps({"chat_template": CHATML_TEMPLATE}), "chat_template.jinja": MISTRAL_TEMPLATE},
     "conversations": SHORT_CONVERSATIONS},
    {"name": "chat_template_json", "files": {"chat_template.json": json.dumps({"chat_template": MISTRAL_TEMPLATE})},
     "conversations": SHORT_CONVERSATIONS},
]


# ---- recording ---------------------------------------------------------------------------------

def model_folder(root, config):
    if "dir" in config:
        return os.path.join(FIXTURES, config["dir"])
    folder = os.path.join(root, config["name"])
    os.makedirs(folder)
    shutil.copy(os.path.join(REFERENCE, "tokenizer.model"), folder)
    for name, text in config["files"].items():
        with open(os.path.join(folder, name), "w", encoding="utf-8", newline="") as f:
            f.write(text)
    with open(os.path.join(folder, "config.json"), "w", encoding="utf-8") as f:
        json.dump({"model_type": "mistral"}, f)
    return folder


def record_config(tok, config):
    out = {
        "vocab_size": len(tok),
        "bos_id": tok.bos_token_id,
        "eos_id": tok.eos_token_id,
        "unk_id": tok.unk_token_id,
        "pad_id": tok.pad_token_id,
        "added_tokens": [
            {"id": i, "content": t.content, "special": t.special, "lstrip": t.lstrip, "rstrip": t.rstrip,
             "normalized": t.normalized}
            for i, t in sorted(tok.added_tokens_decoder.items())
        ],
        "special_ids": sorted(set(tok.all_special_ids)
                              | {i for i, t in tok.added_tokens_decoder.items() if t.special}),
    }
    out["encode"] = []
    for text in config.get("texts", []):
        ids = tok.encode(text, add_special_tokens=False)
        out["encode"].append({"text": text, "ids": ids, "tokens": tok.convert_ids_to_tokens(ids),
                              "ids_with_special": tok.encode(text, add_special_tokens=True)})
    out["decode"] = []
    # The given token sequences, then those of the first few encoded texts.
    for pieces in config.get("pieces", []) + [e["tokens"] for e in out["encode"][:config.get("decode_encoded", 8)]]:
        ids = tok.convert_tokens_to_ids(pieces)
        assert tok.convert_ids_to_tokens(ids) == pieces, pieces
        out["decode"].append({"tokens": pieces, "ids": ids, "text": tok.decode(ids),
                              "text_skip_special": tok.decode(ids, skip_special_tokens=True)})
    out["chat"] = []
    for conversation in config.get("conversations", []):
        messages = [{"role": role, "content": content} for role, content in conversation]
        entry = {"messages": conversation}
        try:
            entry["text"] = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            entry["text_no_generation_prompt"] = tok.apply_chat_template(messages, tokenize=False,
                                                                         add_generation_prompt=False)
        except Exception as e:  # noqa: BLE001 -- recorded: the C++ side must refuse too
            entry = {"messages": conversation, "error": error_text(e)}
        out["chat"].append(entry)
    return out


def compact_json(value, depth=0):
    """JSON with objects spread over lines, but lists of numbers, strings or pairs (and every entry
    of the encode / decode / chat lists) each on one line: small and still readable."""
    one_line = lambda v: json.dumps(v, ensure_ascii=False)  # noqa: E731
    pad = " " * (depth + 1)
    if isinstance(value, dict) and value:
        items = [f"{pad}{one_line(k)}: {compact_json(v, depth + 1)}" for k, v in value.items()]
        return "{\n" + ",\n".join(items) + "\n" + " " * depth + "}" + ("\n" if depth == 0 else "")
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        return "[\n" + ",\n".join(pad + one_line(v) for v in value) + "\n" + " " * depth + "]"
    return one_line(value)


def main():
    result = {
        "about": "expectations of tests/llm/test_llm_tokenizer.cpp from transformers.AutoTokenizer; "
                 "made by tests/scripts/make_tokenizer_cases.py",
        "versions": {"transformers": transformers.__version__, "tokenizers": tokenizers.__version__,
                     "sentencepiece": sentencepiece.__version__, "jinja2": jinja2.__version__},
        "sentencepiece_size": N,
        "configs": {},
    }
    root = tempfile.mkdtemp(prefix="tokenizer-cases-")
    try:
        for config in CONFIGS:
            entry = {}
            if "dir" in config:
                entry["dir"] = config["dir"]
            else:
                entry["files"] = config["files"]
            if "add_special_tokens" in config:
                entry["add_special_tokens"] = config["add_special_tokens"]
            try:
                tok = AutoTokenizer.from_pretrained(model_folder(root, config))
                assert type(tok).__name__ == "LlamaTokenizerFast", type(tok)
                if "add_special_tokens" in config:
                    tok.add_special_tokens({"additional_special_tokens": config["add_special_tokens"]})
            except Exception as e:  # noqa: BLE001 -- recorded: the C++ side must refuse too
                entry["error"] = error_text(e)
                result["configs"][config["name"]] = entry
                continue
            entry.update(record_config(tok, config))
            result["configs"][config["name"]] = entry
    finally:
        shutil.rmtree(root)

    os.makedirs(OUT_DIR, exist_ok=True)
    path = os.path.join(OUT_DIR, "expected.json")
    with open(path, "w", encoding="utf-8") as f:
        f.write(compact_json(result))
    print(f"wrote {path} ({os.path.getsize(path)} bytes)", file=sys.stderr)


if __name__ == "__main__":
    main()
