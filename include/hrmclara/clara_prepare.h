// Turning a user's files into CLaRa documents, torch-free: text, Markdown and PDF files are read,
// cleaned, normalised and cut into chunks that fit the compressor (doc_max_length tokens), and
// written as the documents JSONL that `clara_infer compress` reads and, optionally, as stage-1
// training rows. What `clara_prepare` runs.
//
// Reading (by extension, case-insensitive; anything else is refused, naming the file):
//   .txt                as is (UTF-8; a byte-order mark is dropped; bytes that are not valid UTF-8
//                       become U+FFFD, with a warning naming the file and line).
//   .md / .markdown     strip_markdown() below, then as text.
//   .pdf                poppler-cpp, page by page, text in reading order (poppler's
//                       non_raw_non_physical_layout, which puts a blank line between text blocks).
//                       A password-protected (locked), corrupt, truncated or non-PDF file is a
//                       FormatError naming the file (an encrypted PDF that opens without a password,
//                       e.g. one with only an owner password, is read); a page without text (an
//                       image-only or empty page) is a warning naming the file and page; a PDF
//                       without any text is a FormatError ("scanned? run OCR first"). poppler's own
//                       diagnostics are kept off stderr (the last one is appended to the error).
// A directory stands for every .txt, .md, .markdown and .pdf file below it, recursively, in byte
// order of their paths; names starting with '.' (hidden files and folders) are skipped, and a
// folder reached twice through symbolic links is read once.
//
// Normalisation (normalize_text), applied to every file's (or PDF page's) text:
//   * CR LF and lone CR become LF; form feeds, vertical tabs, U+0085, U+2028 and U+2029 become LF;
//     tabs, no-break spaces and the other Unicode space separators become a space; the other C0 and
//     C1 control characters, U+FEFF and soft hyphens (U+00AD) are dropped.
//   * Each line loses its leading and trailing spaces; runs of spaces inside a line become one.
//   * Lines that are empty after that separate paragraphs: any run of them becomes exactly one
//     blank line ("\n\n"); the text has no leading or trailing blank lines.
//   * Text files and Markdown keep the single line breaks inside a paragraph (lists, verse, code).
//     PDF pages join the lines of a paragraph with one space (their line breaks are layout), and a
//     line ending in a letter and '-' whose next line starts with a lowercase letter is joined
//     without the hyphen ("exam-" "ple" -> "example"; this also joins "well-" "known" into
//     "wellknown", the usual price of de-hyphenation); a soft hyphen that ends a line joins the two
//     lines without a space.
//
// Chunking (chunk_text): greedy, in order, at the highest level that fits. Paragraphs are packed
// into a chunk while the chunk stays within the limit; a paragraph that does not fit into the
// current chunk starts the next one; a paragraph longer than the limit on its own is cut at
// sentence ends (a '.', '!', '?', '…', '。', '！' or '？', possibly followed by closing quotes or
// brackets, then whitespace) and at the line breaks inside it; a sentence longer than the limit at
// spaces between words; a word longer than the limit between UTF-8 code points. Every other cut
// (except one right after a full-width sentence end) falls on whitespace, which belongs to no
// chunk: the chunks, with the whitespace that separated them put back, are the normalised text. A chunk's size is the number of tokens
// the compressor gives its text: |encode("<ENC><s>" + text + "</s>")| - 3 with CLaRa's tokenizer
// (the same as encode(text) for legacy SentencePiece tokenizers), so a chunk of at most
// doc_max_length tokens is never truncated by the encoder.
//
// Markdown (strip_markdown), line by line:
//   * a YAML front-matter block (a first line "---" up to the next "---" or "...") is dropped;
//   * fenced code blocks: the fence lines (``` or ~~~, up to 3 spaces of indent, with or without
//     an info string) are dropped (each leaves a blank line, so the code is a paragraph of its
//     own), the code lines between them kept verbatim (nothing else below applies inside);
//   * HTML comments <!-- ... --> are dropped, also across lines;
//   * ATX headings lose their opening #'s and an optional closing run of #'s ("## A ##" -> "A");
//     setext underlines (a line of only '=' or only '-' right under a text line) and thematic
//     breaks (3 or more '*', '-' or '_', spaces allowed) become blank lines;
//   * blockquote markers ('>' at the start of a line, repeated) are dropped; list bullets '*' and
//     '+' become '-' (ordered markers "1." stay);
//   * link reference definitions ("[label]: url ...") are dropped; images ![alt](url) and
//     ![alt][ref] become alt; links [text](url) and [text][ref] become text; autolinks <url> become
//     url;
//   * inline code loses its backticks (its content is kept verbatim);
//   * emphasis markers are dropped: runs of '*' or '~~' that touch a non-space character on at
//     least one side, and runs of '_' that do so and are not inside a word (snake_case stays);
//   * a backslash before ASCII punctuation is dropped and the punctuation kept literally.
// Everything else (tables, raw HTML tags, footnote markers, indented code) is kept as text, and
// normalisation then collapses indentation. Known limits of these rules: "2*3" loses its '*'
// (a run of '*' touching text is taken for emphasis) and "__init__" becomes "init".
#pragma once

#include <hrmclara/llm_tokenizer.h>

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace hrmclara {

enum class PrepareSourceKind { kText, kMarkdown, kPdf };

// The kind of a file by its extension; FormatError naming the file for any other extension.
PrepareSourceKind prepare_source_kind(const std::string& path);

// Files and directories as the user gave them -> the files to read, in order (see above): a
// directory expands to its files in sorted order; a path given twice (or found twice) is read once.
// IoError for a path that does not exist; FormatError for a file given by name whose extension is
// not one of ours (files of other kinds inside directories are skipped silently).
std::vector<std::string> expand_prepare_inputs(const std::vector<std::string>& inputs);

// ---- text ----------------------------------------------------------------------------------------

std::string strip_markdown(const std::string& text);

// `join_lines`: PDF mode (lines of a paragraph joined with spaces, hyphenated breaks mended).
// The input must be valid UTF-8 (repair_utf8 first).
std::string normalize_text(const std::string& text, bool join_lines = false);

// `text` with every byte that is not part of a valid UTF-8 sequence replaced by U+FFFD; `bad`
// receives how many were replaced and `first_bad_line` the 1-based line of the first (0: none).
std::string repair_utf8(const std::string& text, size_t* bad = nullptr, size_t* first_bad_line = nullptr);

// One PDF page's raw text (poppler's). `pages` receives every page, 1-based page i at [i - 1].
// FormatError naming the file for a locked (password-protected), corrupt, truncated or non-PDF file
// (poppler's own diagnostics are kept off stderr); IoError when the file cannot be read.
std::vector<std::string> read_pdf_pages(const std::string& path);

// ---- chunks --------------------------------------------------------------------------------------

// A chunk of a normalised text: text.substr(begin, end - begin).
struct TextSpan {
  size_t begin = 0, end = 0;
};

// Token count of a piece of text (see "Chunking" above for the one the tool uses).
using TokenCounter = std::function<int64_t(const std::string&)>;

// Cuts normalised `text` into chunks of at most `max_tokens` tokens as described above. Returns
// their spans in order (none for an empty text); every chunk is non-empty, starts and ends on code
// point boundaries, and what lies between two chunks is whitespace (empty only where a word had to
// be cut, or after a full-width sentence end). UsageError when max_tokens < 1; FormatError when a single code point is longer than
// max_tokens tokens (it cannot be cut).
std::vector<TextSpan> chunk_text(const std::string& text, int64_t max_tokens, const TokenCounter& count);

// The counter of the chunks' sizes: tokens of `text` inside the compressor's "<ENC><s>" + text +
// "</s>" (the tokenizer must know "<ENC>", as load_clara_tokenizer's does).
int64_t compressor_token_count(const LlmTokenizer& tokenizer, const std::string& text);

// ---- the whole job ---------------------------------------------------------------------------------

struct PrepareOptions {
  int64_t doc_max_length = 256;  // the compressor's document length (CLaRa's doc_max_length)
  int64_t min_tokens = 1;        // chunks of fewer tokens are dropped (counted in the summary)
};

struct PreparedChunk {
  std::string id;      // "<stem>-<n>" for text files, "<stem>-p<page>-<n>" for PDFs (n 1-based per
                       // file or page); the stem keeps [A-Za-z0-9._-] and turns the rest into '_',
                       // and gets "-2", "-3", ... when another file already has it
  std::string text;
  std::string source;  // the path as found
  int page = 0;        // 1-based PDF page; 0 for text files (null in the JSON)
  int64_t tokens = 0;
};

struct PrepareSummary {
  int64_t files = 0;          // files read
  int64_t pdf_pages = 0;      // PDF pages read (with or without text)
  int64_t empty_pages = 0;    // PDF pages without text (each also a warning)
  int64_t chunks = 0;         // chunks kept
  int64_t tokens = 0;         // their tokens
  int64_t dropped_chunks = 0; // chunks under min_tokens
  std::vector<std::string> warnings;  // one line each, naming the file (and page)
};

struct PrepareResult {
  std::vector<PreparedChunk> chunks;
  PrepareSummary summary;
};

// Reads, normalises and chunks every file of `files` (expand_prepare_inputs' output). Warnings go
// to the summary (the caller logs them). FormatError naming the file (and page) for a file that
// cannot be read as its kind, for text that holds a CLaRa control token ("<MEM0>", "<SEP>", ...,
// which would shift the memory slots), and when nothing at all yields a chunk.
PrepareResult prepare_documents(const std::vector<std::string>& files, const TokenCounter& count,
                                const PrepareOptions& options);

// One line of the documents JSONL: {"id", "text", "source", "page" (null for text), "tokens"}.
std::string prepared_chunk_json(const PreparedChunk& chunk);
// One stage-1 row whose target is the chunk itself: {"data_type": "paraphrase", "answers": [text],
// "docs": [text]}.
std::string prepared_stage1_row_json(const PreparedChunk& chunk);

}  // namespace hrmclara
