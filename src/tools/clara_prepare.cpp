// clara_prepare: text, Markdown and PDF files -> a documents JSONL for CLaRa (chunks that fit the
// compressor), and optionally stage-1 rows that train a compressor on them. See clara_prepare.h.
#include <hrmclara/clara_data.h>
#include <hrmclara/clara_prepare.h>
#include <hrmclara/cli.h>
#include <hrmclara/errors.h>
#include <hrmclara/files.h>
#include <hrmclara/log.h>

#include <nlohmann/json.hpp>

#include <iostream>
#include <string>
#include <vector>

using namespace hrmclara;

namespace {

const char* kUsage =
    "--base BASE_DIR (--input FILE_OR_DIR ... | FILE_OR_DIR ...) --out DOCS.jsonl [--doc-max-length 256]\n"
    "       [--stage1-rows ROWS.jsonl] [--min-tokens N] [--json]\n"
    "Reads .txt, .md / .markdown and .pdf files (a directory: every such file below it, sorted), cuts their\n"
    "text into chunks of at most --doc-max-length tokens of the base model's tokenizer (at paragraph ends\n"
    "where possible, else sentence ends, else between words) and writes one JSON line per chunk:\n"
    "{\"id\", \"text\", \"source\", \"page\" (PDF page, else null), \"tokens\"}, what `clara_infer compress --docs` reads.\n"
    "--stage1-rows also writes {\"data_type\": \"paraphrase\", \"answers\": [chunk], \"docs\": [chunk]} rows for\n"
    "`clara_train --stage stage1`.";

// Every value of --input (ArgParser keeps only the last one of a repeated option).
std::vector<std::string> input_options(int argc, char** argv) {
  std::vector<std::string> out;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--input" && i + 1 < argc) out.push_back(argv[++i]);
    else if (arg.compare(0, 8, "--input=") == 0) out.push_back(arg.substr(8));
  }
  return out;
}

void write_lines(const std::string& path, const std::vector<std::string>& lines) {
  std::string bytes;
  for (const auto& line : lines) {
    bytes += line;
    bytes += '\n';
  }
  write_file_atomically(path, bytes);
}

}  // namespace

int main(int argc, char** argv) {
  return run_main("clara_prepare", [&] {
    ArgParser a("clara_prepare", kUsage);
    a.option("base", "base model directory whose tokenizer measures the chunks (tokenizer.model)")
        .option("input", "a file or directory to read (repeatable; files may also be given without --input)")
        .option("out", "the documents JSONL to write")
        .option("doc-max-length", "tokens per chunk at most (the CLaRa config's doc_max_length)", "256")
        .option("stage1-rows", "also write stage-1 paraphrase rows (target = the chunk) to this JSONL")
        .option("min-tokens", "drop chunks with fewer tokens (e.g. page numbers alone on a page)", "1")
        .flag("json", "print the summary as one JSON object")
        .option("log-level", "trace|debug|info|warn|error|off", "info");
    if (!a.parse(argc, argv)) return 0;
    const std::string base = a.require("base"), out = a.require("out");
    std::vector<std::string> inputs = input_options(argc, argv);
    for (const auto& p : a.positionals()) inputs.push_back(p);
    if (inputs.empty()) throw UsageError("no input: give files or directories (--input or positional arguments)");
    PrepareOptions options;
    options.doc_max_length = a.get_int("doc-max-length");
    options.min_tokens = a.get_int("min-tokens");
    if (options.doc_max_length < 1) throw UsageError("--doc-max-length must be at least 1");
    if (options.min_tokens < 0) throw UsageError("--min-tokens must be at least 0");
    const std::string rows_path = a.get("stage1-rows");
    if (a.has("stage1-rows") && rows_path == out) throw UsageError("--stage1-rows and --out name the same file");

    const auto files = expand_prepare_inputs(inputs);
    const LlmTokenizer tokenizer = load_clara_tokenizer(base, 1);  // knows <ENC>, which the count wraps around
    const auto result = prepare_documents(
        files, [&](const std::string& text) { return compressor_token_count(tokenizer, text); }, options);
    for (const auto& w : result.summary.warnings) log_warn(w);

    std::vector<std::string> docs, rows;
    for (const auto& c : result.chunks) {
      docs.push_back(prepared_chunk_json(c));
      if (a.has("stage1-rows")) rows.push_back(prepared_stage1_row_json(c));
    }
    write_lines(out, docs);
    if (a.has("stage1-rows")) write_lines(rows_path, rows);

    const auto& s = result.summary;
    if (a.has("json")) {
      nlohmann::ordered_json j;
      j["files"] = s.files;
      j["pdf_pages"] = s.pdf_pages;
      j["empty_pages"] = s.empty_pages;
      j["chunks"] = s.chunks;
      j["tokens"] = s.tokens;
      j["dropped_chunks"] = s.dropped_chunks;
      j["doc_max_length"] = options.doc_max_length;
      j["warnings"] = s.warnings;
      j["out"] = out;
      j["stage1_rows"] = a.has("stage1-rows") ? nlohmann::ordered_json(rows_path) : nlohmann::ordered_json(nullptr);
      std::cout << j.dump() << std::endl;
    } else {
      std::cout << "clara_prepare: " << s.files << " file" << (s.files == 1 ? "" : "s") << ", " << s.pdf_pages
                << " PDF page" << (s.pdf_pages == 1 ? "" : "s") << ", " << s.chunks << " chunk" << (s.chunks == 1 ? "" : "s")
                << ", " << s.tokens << " tokens (at most " << options.doc_max_length << " per chunk"
                << (s.dropped_chunks > 0 ? ", " + std::to_string(s.dropped_chunks) + " under --min-tokens dropped" : "")
                << "), " << s.warnings.size() << " warning" << (s.warnings.size() == 1 ? "" : "s") << " -> " << out
                << (a.has("stage1-rows") ? " and " + rows_path : "") << std::endl;
    }
    return 0;
  });
}
