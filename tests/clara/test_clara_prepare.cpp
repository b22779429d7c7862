// clara_prepare: files -> CLaRa documents. Chunks within the token limit that give the normalised
// text back in order, the preference for paragraph and sentence cuts, UTF-8 safety, the
// normalisation and the Markdown stripping, PDFs written here by hand (text pages, an image-only
// page, an encrypted one, corrupt and truncated ones) through poppler, the stage-1 rows, the
// documents file that `clara_infer compress` accepts, and the command line's errors.
#include <hrmclara/clara_data.h>
#include <hrmclara/clara_prepare.h>
#include <hrmclara/errors.h>
#include <hrmclara/files.h>
#include <hrmclara/llm_tokenizer.h>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstdio>
#include <set>
#include <sstream>

#include "test_util.h"

namespace hrmclara {
namespace {

using test::error_of;
using test::fixture;
using test::run_command;
using test::ScratchDir;
using test::tool;
using test::write_bytes;
using Json = nlohmann::json;

const std::string kBase = fixture("clara-reference");
const std::string kTrain = fixture("clara-train");

const LlmTokenizer& tokenizer() {
  static const LlmTokenizer t = load_clara_tokenizer(kBase, 4);  // the fixture CLaRa's tokenizer (n = 4)
  return t;
}

int64_t count(const std::string& text) { return compressor_token_count(tokenizer(), text); }
const TokenCounter kCount = [](const std::string& text) { return count(text); };

std::vector<std::string> texts_of(const std::string& text, const std::vector<TextSpan>& spans) {
  std::vector<std::string> out;
  for (const auto& s : spans) out.push_back(text.substr(s.begin, s.end - s.begin));
  return out;
}

// Whole code points of valid UTF-8 only (an independent check of the chunks' edges).
bool valid_utf8(const std::string& s) {
  for (size_t i = 0; i < s.size();) {
    const auto c = static_cast<unsigned char>(s[i]);
    const size_t n = c < 0x80 ? 1 : (c >> 5) == 0x6 ? 2 : (c >> 4) == 0xE ? 3 : (c >> 3) == 0x1E ? 4 : 0;
    if (n == 0 || i + n > s.size()) return false;
    for (size_t k = 1; k < n; ++k)
      if ((static_cast<unsigned char>(s[i + k]) & 0xC0) != 0x80) return false;
    i += n;
  }
  return true;
}

// Checks every promise of chunk_text: in order, non-empty, within the limit, the gaps whitespace
// (or empty where `allow_empty_gaps`), and the chunks with their gaps are the text.
void expect_good_chunks(const std::string& text, const std::vector<TextSpan>& spans, int64_t limit, bool allow_empty_gaps) {
  ASSERT_FALSE(spans.empty());
  std::string rebuilt;
  size_t at = 0;
  for (size_t i = 0; i < spans.size(); ++i) {
    const auto& s = spans[i];
    ASSERT_LE(at, s.begin) << "chunk " << i << " out of order";
    ASSERT_LT(s.begin, s.end) << "chunk " << i << " is empty";
    const std::string gap = text.substr(at, s.begin - at);
    EXPECT_EQ(gap.find_first_not_of(" \n"), std::string::npos) << "text lost between chunks " << i - 1 << " and " << i << ": '"
                                                               << gap << "'";
    if (i > 0 && !allow_empty_gaps) EXPECT_FALSE(gap.empty()) << "chunk " << i << " starts inside a word";
    const std::string chunk = text.substr(s.begin, s.end - s.begin);
    EXPECT_LE(count(chunk), limit) << "chunk " << i << ": '" << chunk << "'";
    EXPECT_TRUE(valid_utf8(chunk)) << "chunk " << i << " is cut inside a UTF-8 character";
    EXPECT_NE(chunk.front(), ' ');
    EXPECT_NE(chunk.back(), '\n');
    rebuilt += gap + chunk;
    at = s.end;
  }
  EXPECT_EQ(at, text.size()) << "the end of the text is in no chunk";
  EXPECT_EQ(rebuilt, text);
}

// A few paragraphs of varied sentences (deterministic).
std::string sample_text() {
  const char* words[] = {"river", "city", "bridge", "the", "Basel", "flows", "north", "and", "ships", "carry",
                         "goods", "along", "banks", "where", "old", "towns", "grew", "over", "centuries", "trade"};
  std::string out;
  uint32_t state = 12345;
  const auto next = [&](uint32_t mod) {
    state = state * 1103515245u + 12345u;
    return (state >> 16) % mod;
  };
  for (int p = 0; p < 6; ++p) {
    if (p > 0) out += "\n\n";
    const int sentences = 1 + static_cast<int>(next(6));
    for (int s = 0; s < sentences; ++s) {
      if (s > 0) out += (next(5) == 0 ? "\n" : " ");
      const int len = 3 + static_cast<int>(next(p == 3 ? 60 : 14));  // paragraph 3 holds long sentences
      for (int w = 0; w < len; ++w) {
        if (w > 0) out += ' ';
        out += words[next(20)];
      }
      out += next(3) == 0 ? "?" : ".";
    }
  }
  return out;
}

// ---- a hand-made PDF --------------------------------------------------------------------------------

std::string pdf_string(const std::string& s) {
  std::string out = "(";
  for (char c : s) {
    if (c == '(' || c == ')' || c == '\\') out += '\\';
    out += c;
  }
  return out + ")";
}

// One page: blocks of lines (a block is a paragraph, set 40 points below the previous one); no
// block at all gives a page with only a filled rectangle (no text object), like a scanned page.
using PdfPage = std::vector<std::vector<std::string>>;

// A PDF 1.4 file: catalog, page tree, Helvetica (a standard Type1 font, WinAnsiEncoding), one page
// object and one content stream per page, a cross-reference table with the objects' byte offsets.
// `encrypt` adds a standard-security-handler /Encrypt dictionary (RC4, 40 bits) whose /O and /U
// values match no password, so the document cannot be opened.
std::string make_pdf(const std::vector<PdfPage>& pages, bool encrypt = false) {
  std::vector<std::string> objects;  // object i + 1
  objects.push_back("<< /Type /Catalog /Pages 2 0 R >>");
  std::string kids;
  for (size_t p = 0; p < pages.size(); ++p) kids += std::to_string(4 + 2 * p) + " 0 R ";
  objects.push_back("<< /Type /Pages /Kids [ " + kids + "] /Count " + std::to_string(pages.size()) + " >>");
  objects.push_back("<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>");
  for (size_t p = 0; p < pages.size(); ++p) {
    objects.push_back("<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Resources << /Font << /F1 3 0 R >> >> /Contents " +
                      std::to_string(5 + 2 * p) + " 0 R >>");
    std::string content;
    if (pages[p].empty()) {
      content = "0.2 0.4 0.8 rg 72 300 400 300 re f\n";
    } else {
      content = "BT /F1 11 Tf 14 TL 72 740 Td\n";
      for (size_t b = 0; b < pages[p].size(); ++b) {
        if (b > 0) content += "0 -40 Td\n";
        // T* moves the line matrix down one line, so the next block's Td starts from the last line.
        for (size_t l = 0; l < pages[p][b].size(); ++l) content += (l > 0 ? "T* " : "") + pdf_string(pages[p][b][l]) + " Tj\n";
      }
      content += "ET\n";
    }
    objects.push_back("<< /Length " + std::to_string(content.size()) + " >>\nstream\n" + content + "endstream");
  }
  if (encrypt)
    objects.push_back("<< /Filter /Standard /V 1 /R 2 /Length 40 /P -44 /O <" + std::string(64, '7') + "> /U <" +
                      std::string(64, '3') + "> >>");
  std::string out = "%PDF-1.4\n%\xE2\xE3\xCF\xD3\n";
  std::vector<size_t> offsets;
  for (size_t i = 0; i < objects.size(); ++i) {
    offsets.push_back(out.size());
    out += std::to_string(i + 1) + " 0 obj\n" + objects[i] + "\nendobj\n";
  }
  const size_t xref = out.size();
  out += "xref\n0 " + std::to_string(objects.size() + 1) + "\n0000000000 65535 f \n";
  for (size_t off : offsets) {
    char entry[32];
    std::snprintf(entry, sizeof(entry), "%010zu 00000 n \n", off);  // 20 bytes per entry
    out += entry;
  }
  out += "trailer\n<< /Size " + std::to_string(objects.size() + 1) + " /Root 1 0 R";
  if (encrypt)
    out += " /Encrypt " + std::to_string(objects.size()) +
           " 0 R /ID [<00112233445566778899aabbccddeeff> <00112233445566778899aabbccddeeff>]";
  out += " >>\nstartxref\n" + std::to_string(xref) + "\n%%EOF\n";
  return out;
}

const std::vector<PdfPage> kPdfPages = {
    {{"The Rhine flows from the Alps to the North Sea.", "Barges carry goods along most of its hyphen-", "ated length."},
     {"A second paragraph on page one, in caf\xE9 style (WinAnsi)."}},
    {},  // no text: an image-only page
    {{"Page three speaks of Basel and Strasbourg."}},
};

bool one_line(const std::string& s) { return !s.empty() && s.find('\n') == s.size() - 1; }

}  // namespace

// ---- chunking -------------------------------------------------------------------------------------------

TEST(ClaraPrepare, ChunksStayWithinTheLimitAndGiveTheTextBackInOrder) {
  const std::string text = sample_text();
  ASSERT_GT(count(text), 300);
  for (const int64_t limit : {6, 12, 32, 80, 256}) {
    SCOPED_TRACE("limit " + std::to_string(limit));
    const auto spans = chunk_text(text, limit, kCount);
    expect_good_chunks(text, spans, limit, /*allow_empty_gaps=*/false);
    // The encoder (right truncation at doc_max_length + 3) keeps every token of every chunk.
    const auto chunks = texts_of(text, spans);
    EXPECT_EQ(clara_encoder_inputs(tokenizer(), chunks, static_cast<int>(limit), 4).truncated, 0);
    if (limit == 32) {
      // Greedy packing: the chunks fill the limit (one token less truncates some of them).
      EXPECT_GT(clara_encoder_inputs(tokenizer(), chunks, static_cast<int>(limit - 1), 4).truncated, 0);
      EXPECT_GT(chunks.size(), 10u);
    }
  }
  // The count is what the compressor sees, which for this legacy tokenizer is encode(text).
  EXPECT_EQ(count("Basel is a Swiss city on the Rhine."), static_cast<int64_t>(tokenizer().encode("Basel is a Swiss city on the Rhine.").size()));
  EXPECT_TRUE(chunk_text("", 8, kCount).empty());
  EXPECT_THROW(chunk_text("text", 0, kCount), UsageError);
}

TEST(ClaraPrepare, CutsAtParagraphEndsThenSentenceEndsThenWords) {
  // Paragraphs: A + the first sentence of B would fit, but the cut goes at A's end.
  const std::string a = "Alpha beta gamma delta epsilon zeta.", b1 = "Eta theta.", b2 = "Iota kappa.";
  const std::string b = b1 + " " + b2;
  const int64_t limit = count(a + "\n\n" + b1);
  ASSERT_GT(count(a + "\n\n" + b), limit);
  ASSERT_LE(count(b), limit);
  EXPECT_EQ(texts_of(a + "\n\n" + b, chunk_text(a + "\n\n" + b, limit, kCount)), (std::vector<std::string>{a, b}));

  // Sentences: the first two fit with a word of the third, but the cut goes at the sentence end.
  const std::string s1 = "One two three.", s2 = "Four five six!", s3 = "Seven eight nine.";
  const std::string para = s1 + " " + s2 + " " + s3;
  const int64_t sentence_limit = count(s1 + " " + s2 + " Seven");
  ASSERT_GT(count(para), sentence_limit);
  ASSERT_LE(count(s3), sentence_limit);
  EXPECT_EQ(texts_of(para, chunk_text(para, sentence_limit, kCount)), (std::vector<std::string>{s1 + " " + s2, s3}));
  // A closing quote after the full stop still ends the sentence; a line break inside a paragraph
  // is a cut point like a sentence end.
  const std::string quoted = "He said \"stop.\" Then it rained for seven long days in the old town.";
  const auto q = texts_of(quoted, chunk_text(quoted, count("He said \"stop.\" Then it"), kCount));
  EXPECT_EQ(q.front(), "He said \"stop.\"");
  const std::string lines = "first line of a list\nsecond line here and more words";
  EXPECT_EQ(texts_of(lines, chunk_text(lines, count("first line of a list\nsecond line"), kCount)).front(), "first line of a list");

  // Words: a sentence without ends is cut at spaces, never inside a word.
  const std::string run_on = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho sigma";
  const auto spans = chunk_text(run_on, 7, kCount);
  expect_good_chunks(run_on, spans, 7, false);
  std::set<std::string> words;
  for (size_t s = 0, e; s < run_on.size(); s = e + 1) {
    e = run_on.find(' ', s);
    if (e == std::string::npos) e = run_on.size();
    words.insert(run_on.substr(s, e - s));
  }
  for (const auto& chunk : texts_of(run_on, spans))
    for (size_t s = 0, e; s < chunk.size(); s = e + 1) {
      e = chunk.find(' ', s);
      if (e == std::string::npos) e = chunk.size();
      EXPECT_TRUE(words.count(chunk.substr(s, e - s))) << "'" << chunk.substr(s, e - s) << "' is a cut word";
    }
}

TEST(ClaraPrepare, LongWordsAreCutBetweenCodePointsOnly) {
  // No spaces: 2-, 3- and 4-byte characters (é, 日本, an emoji) must be cut between code points.
  std::string word;
  for (int i = 0; i < 40; ++i) word += i % 3 == 0 ? "\xC3\xA9" : i % 3 == 1 ? "\xE6\x97\xA5\xE6\x9C\xAC" : "\xF0\x9F\x98\x80";
  for (const int64_t limit : {6, 9, 13}) {  // a character is up to 4 byte tokens (+ the leading '▁')
    SCOPED_TRACE("limit " + std::to_string(limit));
    const auto spans = chunk_text(word, limit, kCount);
    EXPECT_GT(spans.size(), 2u);
    expect_good_chunks(word, spans, limit, /*allow_empty_gaps=*/true);
  }
  // Full-width sentence ends are cut points without a space after them.
  const std::string cjk = "\xE6\x97\xA5\xE6\x9C\xAC\xE3\x80\x82\xE6\x97\xA5\xE6\x9C\xAC\xE6\x97\xA5\xE6\x9C\xAC\xE3\x80\x82";
  const auto cjk_chunks = texts_of(cjk, chunk_text(cjk, count("\xE6\x97\xA5\xE6\x9C\xAC\xE6\x97\xA5\xE6\x9C\xAC\xE3\x80\x82"), kCount));
  EXPECT_EQ(cjk_chunks.front(), "\xE6\x97\xA5\xE6\x9C\xAC\xE3\x80\x82");
  // Invalid bytes become U+FFFD before anything else sees them.
  size_t bad = 0, line = 0;
  EXPECT_EQ(repair_utf8("ok\nbad \xFF\xC3 end", &bad, &line), "ok\nbad \xEF\xBF\xBD\xEF\xBF\xBD end");
  EXPECT_EQ(bad, 2u);
  EXPECT_EQ(line, 2u);
}

// ---- normalisation and Markdown --------------------------------------------------------------------------

TEST(ClaraPrepare, NormalisesWhitespace) {
  EXPECT_EQ(normalize_text("\xEF\xBB\xBF  Title\t here  \r\n\r\n\r\n  line one   \rline\xC2\xA0two\n\n\n\f end\x01  \n"),
            "Title here\n\nline one\nline two\n\nend");
  EXPECT_EQ(normalize_text(" \n \t\n"), "");
  // PDF mode: lines of a paragraph joined, hyphenated breaks mended (only before a lowercase letter).
  EXPECT_EQ(normalize_text("The hyphen-\nated word and a\nbroken line.\n\nNew block of Jean-\nPaul, soft\xC2\xAD\nhyphen.", true),
            "The hyphenated word and a broken line.\n\nNew block of Jean- Paul, softhyphen.");
  EXPECT_EQ(normalize_text("keep\nlines\n", false), "keep\nlines");
}

TEST(ClaraPrepare, StripsMarkdownSyntax) {
  const std::string md =
      "---\ntitle: front matter\n---\n"
      "# Heading *one* #\n\n"
      "Some **bold**, _emphasis_, ~~struck~~ and `inline code` with snake_case and 2 * 3.\n"
      "A [link text](https://example.com/x_(y)) and ![an image](img.png) and [ref link][r] <https://auto.link/>.\n"
      "Escaped \\*stars\\* stay.<!-- a comment -->\n\n"
      "<!-- a comment\nover lines -->\n"
      "> quoted *text*\n\n"
      "* bullet one\n+ bullet two\n1. numbered\n\n"
      "```python\nx = a_b * 2  # **kept**\n```\n\n"
      "Setext title\n============\n\n"
      "***\n\n"
      "[r]: https://example.com/ref\n";
  EXPECT_EQ(normalize_text(strip_markdown(md)),
            "Heading one\n\n"
            "Some bold, emphasis, struck and inline code with snake_case and 2 * 3.\n"
            "A link text and an image and ref link https://auto.link/.\n"
            "Escaped *stars* stay.\n\n"
            "quoted text\n\n"
            "- bullet one\n- bullet two\n1. numbered\n\n"
            "x = a_b * 2 # **kept**\n\n"
            "Setext title");
}

// ---- PDF ---------------------------------------------------------------------------------------------------

TEST(ClaraPrepare, PdfPagesTextAndImageOnlyPagesAsPopplerGivesThem) {
  ScratchDir dir;
  const std::string path = dir / "rhine.pdf";
  write_bytes(path, make_pdf(kPdfPages));
  const auto pages = read_pdf_pages(path);
  ASSERT_EQ(pages.size(), 3u);
  EXPECT_EQ(normalize_text(pages[0], true),
            "The Rhine flows from the Alps to the North Sea. Barges carry goods along most of its hyphenated length.\n\n"
            "A second paragraph on page one, in caf\xC3\xA9 style (WinAnsi).");
  EXPECT_EQ(normalize_text(pages[1], true), "");
  EXPECT_EQ(normalize_text(pages[2], true), "Page three speaks of Basel and Strasbourg.");

  // A limit that holds each paragraph of page 1 but not both: one chunk per paragraph.
  const std::string p1 = "The Rhine flows from the Alps to the North Sea. Barges carry goods along most of its hyphenated length.";
  const std::string p2 = "A second paragraph on page one, in caf\xC3\xA9 style (WinAnsi).";
  PrepareOptions o;
  o.doc_max_length = std::max(count(p1), count(p2));
  ASSERT_GT(count(p1 + "\n\n" + p2), o.doc_max_length);
  const auto r = prepare_documents({path}, kCount, o);
  EXPECT_EQ(r.summary.files, 1);
  EXPECT_EQ(r.summary.pdf_pages, 3);
  EXPECT_EQ(r.summary.empty_pages, 1);
  ASSERT_EQ(r.summary.warnings.size(), 1u);
  EXPECT_NE(r.summary.warnings[0].find(path + ": page 2"), std::string::npos) << r.summary.warnings[0];
  std::vector<std::string> ids;
  int64_t tokens = 0;
  for (const auto& c : r.chunks) {
    ids.push_back(c.id);
    EXPECT_NE(c.page, 2);
    EXPECT_EQ(c.source, path);
    EXPECT_LE(c.tokens, o.doc_max_length);
    EXPECT_EQ(c.tokens, count(c.text));
    tokens += c.tokens;
  }
  EXPECT_EQ(ids, (std::vector<std::string>{"rhine-p1-1", "rhine-p1-2", "rhine-p3-1"}));
  EXPECT_EQ(r.summary.tokens, tokens);
  EXPECT_EQ(r.chunks[0].text, p1);
  EXPECT_EQ(r.chunks[1].text, p2);
  EXPECT_EQ(r.chunks[2].page, 3);

  // --min-tokens drops short chunks (here the whole of page 3).
  o.min_tokens = count(r.chunks[2].text) + 1;
  const auto dropped = prepare_documents({path}, kCount, o);
  EXPECT_EQ(dropped.summary.dropped_chunks, 1);
  EXPECT_EQ(dropped.chunks.size(), 2u);
}

TEST(ClaraPrepare, PdfErrorsNameTheFile) {
  ScratchDir dir;
  const auto fails = [&](const std::string& name, const std::string& bytes, const std::string& what) {
    write_bytes(dir / name, bytes);
    const std::string msg = error_of<FormatError>([&] { prepare_documents({dir / name}, kCount, {}); });
    EXPECT_EQ(msg.rfind(dir / name + ": ", 0), 0u) << msg;
    EXPECT_NE(msg.find(what), std::string::npos) << msg;
  };
  // poppler opens it but reports it locked (is_encrypted() then says false, and pages() would crash).
  fails("locked.pdf", make_pdf({{{"Secret text."}}}, /*encrypt=*/true), "encrypted and needs a password");
  const std::string good = make_pdf(kPdfPages);
  fails("truncated.pdf", good.substr(0, good.size() / 2), "not a readable PDF");
  fails("garbage.pdf", "this is no PDF at all\n", "not a readable PDF");
  fails("empty.pdf", "", "not a readable PDF");
  fails("no-text.pdf", make_pdf({{}, {}}), "no text on any of its 2 pages");
  // Missing files are I/O errors, not format errors.
  EXPECT_NE(error_of<IoError>([&] { prepare_documents({dir / "missing.pdf"}, kCount, {}); }).find("missing.pdf"), std::string::npos);
}

// ---- files, ids, the whole job ---------------------------------------------------------------------------

TEST(ClaraPrepare, DirectoriesExpandSortedAndIdsStayUnique) {
  ScratchDir dir;
  make_directories(dir / "docs/sub");
  make_directories(dir / "docs/.hidden");
  write_bytes(dir / "docs/b.txt", "Text file b.\n");
  write_bytes(dir / "docs/sub/b.md", "# B again\n\nSame stem, other folder.\n");
  write_bytes(dir / "docs/a-p1.txt", "A file whose stem looks like a PDF id.\n");
  write_bytes(dir / "docs/a.pdf", make_pdf({{{"Page one of a."}}}));
  write_bytes(dir / "docs/notes.csv", "skipped,silently\n");
  write_bytes(dir / "docs/.hidden/x.txt", "hidden\n");
  write_bytes(dir / "docs/UPPER.TXT", "Upper-case extension.\n");
  const auto files = expand_prepare_inputs({dir / "docs", dir / "docs/b.txt"});  // b.txt given twice
  EXPECT_EQ(files, (std::vector<std::string>{dir / "docs/UPPER.TXT", dir / "docs/a-p1.txt", dir / "docs/a.pdf",
                                             dir / "docs/b.txt", dir / "docs/sub/b.md"}));
  const auto r = prepare_documents(files, kCount, {});
  std::vector<std::string> ids;
  for (const auto& c : r.chunks) ids.push_back(c.id);
  // a.pdf's page 1 would be "a-p1-1", which a-p1.txt has: its stem becomes "a-2".
  EXPECT_EQ(ids, (std::vector<std::string>{"UPPER-1", "a-p1-1", "a-2-p1-1", "b-1", "b-2-1"}));
  EXPECT_EQ(r.chunks[4].text, "B again\n\nSame stem, other folder.");
  EXPECT_EQ(r.chunks[4].page, 0);
  // A file of another kind named explicitly is refused, naming it.
  const std::string msg = error_of<FormatError>([&] { expand_prepare_inputs({dir / "docs/notes.csv"}); });
  EXPECT_EQ(msg.rfind(dir / "docs/notes.csv: ", 0), 0u) << msg;
  EXPECT_THROW(expand_prepare_inputs({dir / "nothing-here"}), IoError);
  // Control tokens would shift the memory slots: refused, naming the file.
  write_bytes(dir / "control.txt", "A <SEP> in the text.\n");
  EXPECT_NE(error_of<FormatError>([&] { prepare_documents({dir / "control.txt"}, kCount, {}); }).find("control.txt: contains '<SEP>'"),
            std::string::npos);
  // Nothing to write at all.
  write_bytes(dir / "blank.txt", " \n\n");
  EXPECT_THROW(prepare_documents({dir / "blank.txt"}, kCount, {}), FormatError);
}

TEST(ClaraPrepare, CommandWritesDocumentsAndStage1RowsThatClaraReads) {
  ScratchDir dir;
  write_bytes(dir / "rhine.pdf", make_pdf(kPdfPages));
  write_bytes(dir / "notes.md", "# Notes\n\n" + sample_text() + "\n");
  const std::string prepare = tool("clara_prepare") + " --base " + kBase + " --doc-max-length 32 ";
  auto r = run_command(prepare + "--input " + (dir / "notes.md") + " --out " + (dir / "docs.jsonl") + " --stage1-rows " +
                           (dir / "rows.jsonl") + " --json " + (dir / "rhine.pdf"),
                       dir.path());
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.err.find("rhine.pdf: page 2: no text"), std::string::npos) << r.err;
  EXPECT_EQ(r.err.find("poppler"), std::string::npos) << r.err;
  const Json summary = Json::parse(r.out);
  EXPECT_EQ(summary["files"], 2);
  EXPECT_EQ(summary["pdf_pages"], 3);
  EXPECT_EQ(summary["empty_pages"], 1);
  EXPECT_EQ(summary["warnings"].size(), 1u);

  // The documents file: one chunk per line, within the limit, ids unique, pages where they belong.
  std::vector<Json> docs;
  {
    std::istringstream in(read_file(dir / "docs.jsonl"));
    for (std::string line; std::getline(in, line);) docs.push_back(Json::parse(line));
  }
  ASSERT_EQ(static_cast<int64_t>(docs.size()), summary["chunks"].get<int64_t>());
  std::set<std::string> ids;
  int64_t tokens = 0;
  for (const auto& d : docs) {
    EXPECT_TRUE(ids.insert(d["id"].get<std::string>()).second) << d.dump();
    EXPECT_LE(d["tokens"].get<int64_t>(), 32);
    EXPECT_EQ(d["tokens"].get<int64_t>(), count(d["text"].get<std::string>()));
    tokens += d["tokens"].get<int64_t>();
    if (d["source"] == dir / "notes.md") EXPECT_TRUE(d["page"].is_null());
    else EXPECT_TRUE(d["page"] == 1 || d["page"] == 3) << d.dump();
  }
  EXPECT_EQ(tokens, summary["tokens"].get<int64_t>());
  EXPECT_EQ(docs.front()["text"].get<std::string>().rfind("Notes", 0), 0u);  // the heading, its '#' gone
  EXPECT_EQ(docs.back()["id"], "rhine-p3-1");

  // The stage-1 rows: upstream's paraphrase format, target = the chunk, read by the trainer's reader.
  const auto rows = read_clara_rows(dir / "rows.jsonl", ClaraStage::kStage1).rows;
  ASSERT_EQ(rows.size(), docs.size());
  for (size_t i = 0; i < rows.size(); ++i) {
    EXPECT_EQ(rows[i].data_type, ClaraDataType::kParaphrase);
    EXPECT_EQ(rows[i].docs, (std::vector<std::string>{docs[i]["text"].get<std::string>()}));
    EXPECT_EQ(rows[i].answers, rows[i].docs);
  }

  // clara_infer compress takes the documents file as it is.
  r = run_command(tool("clara_infer") + " compress --base " + kBase + " --model " + kTrain + "/ckpt_stage1 --dtype float32 --docs " +
                      (dir / "docs.jsonl") + " --index " + (dir / "index"),
                  dir.path());
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(Json::parse(r.out)["compressed"].get<size_t>(), docs.size());

  // Without --json: one summary line.
  r = run_command(prepare + (dir / "rhine.pdf") + " --out " + (dir / "docs2.jsonl"), dir.path());
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_TRUE(one_line(r.out)) << r.out;
  int64_t pdf_chunks = 0;
  for (const auto& d : docs) pdf_chunks += d["source"] == dir / "rhine.pdf" ? 1 : 0;
  EXPECT_NE(r.out.find("1 file, 3 PDF pages, " + std::to_string(pdf_chunks) + " chunks"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("1 warning"), std::string::npos) << r.out;
}

TEST(ClaraPrepare, CommandLineErrorsAreOneLine) {
  ScratchDir dir;
  write_bytes(dir / "a.txt", "Some text.\n");
  write_bytes(dir / "a.docx", "not ours\n");
  write_bytes(dir / "locked.pdf", make_pdf({{{"Secret."}}}, true));
  write_bytes(dir / "broken.pdf", make_pdf(kPdfPages).substr(0, 300));
  const std::string bin = tool("clara_prepare");
  const std::string ok = " --base " + kBase + " --out " + (dir / "o.jsonl") + " ";
  const struct {
    std::string args;
    int code;
    std::string what;
  } cases[] = {
      {"", 2, "missing required option --base"},
      {ok, 2, "no input"},
      {" --base " + kBase + " " + (dir / "a.txt"), 2, "--out"},
      {ok + "--bogus " + (dir / "a.txt"), 2, "unknown option --bogus"},
      {ok + "--doc-max-length 0 " + (dir / "a.txt"), 2, "--doc-max-length"},
      {ok + "--doc-max-length many " + (dir / "a.txt"), 2, "--doc-max-length"},
      {ok + "--min-tokens -1 " + (dir / "a.txt"), 2, "--min-tokens"},
      {ok + "--stage1-rows " + (dir / "o.jsonl") + " " + (dir / "a.txt"), 2, "same file"},
      {ok + "--input", 2, "--input needs a value"},
      {ok + (dir / "missing.txt"), 3, dir / "missing.txt"},
      {ok + (dir / "a.docx"), 4, dir / "a.docx: unknown kind of file '.docx'"},
      {ok + (dir / "locked.pdf"), 4, dir / "locked.pdf: the PDF is encrypted"},
      {ok + (dir / "broken.pdf"), 4, dir / "broken.pdf: not a readable PDF"},
      {" --base " + (dir / "no-base") + " --out " + (dir / "o.jsonl") + " " + (dir / "a.txt"), 3, "no-base"},
      {ok + "--input " + (dir / "a.txt") + " --out " + (dir / "no-such-dir/o.jsonl"), 3, "no-such-dir"},
  };
  for (const auto& c : cases) {
    const auto r = run_command(bin + c.args, dir.path());
    EXPECT_EQ(r.exit_code, c.code) << c.args << "\n" << r.err;
    EXPECT_TRUE(one_line(r.err)) << c.args << "\n" << r.err;
    EXPECT_EQ(r.err.rfind("clara_prepare: error: ", 0), 0u) << r.err;
    EXPECT_NE(r.err.find(c.what), std::string::npos) << c.args << "\n" << r.err;
  }
  EXPECT_FALSE(file_exists(dir / "o.jsonl"));  // nothing written by a failed run
}

}  // namespace hrmclara
