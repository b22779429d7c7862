// Files -> CLaRa documents (see include/hrmclara/clara_prepare.h). No torch here: this file is in
// the library's torch-free object set; PDFs are read through poppler-cpp.
#include <hrmclara/clara_data.h>
#include <hrmclara/clara_prepare.h>
#include <hrmclara/errors.h>
#include <hrmclara/files.h>

#include <nlohmann/json.hpp>

#include <poppler-document.h>
#include <poppler-global.h>
#include <poppler-page.h>

#include <algorithm>
#include <climits>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <set>
#include <sys/stat.h>

namespace hrmclara {
namespace {

// ---- UTF-8 ------------------------------------------------------------------------------------------

// Bytes of the valid UTF-8 sequence at s[i] (no overlongs, surrogates or values above U+10FFFF),
// 0 when none starts there.
size_t sequence_length(const std::string& s, size_t i) {
  const auto byte = [&](size_t k) { return static_cast<unsigned char>(s[k]); };
  const unsigned char lead = byte(i);
  if (lead < 0x80) return 1;
  size_t n = 0;
  unsigned char second_min = 0x80, second_max = 0xBF;
  if (lead >= 0xC2 && lead <= 0xDF) {
    n = 2;
  } else if (lead >= 0xE0 && lead <= 0xEF) {
    n = 3;
    if (lead == 0xE0) second_min = 0xA0;
    if (lead == 0xED) second_max = 0x9F;
  } else if (lead >= 0xF0 && lead <= 0xF4) {
    n = 4;
    if (lead == 0xF0) second_min = 0x90;
    if (lead == 0xF4) second_max = 0x8F;
  } else {
    return 0;
  }
  if (i + n > s.size() || byte(i + 1) < second_min || byte(i + 1) > second_max) return 0;
  for (size_t k = 2; k < n; ++k)
    if (byte(i + k) < 0x80 || byte(i + k) > 0xBF) return 0;
  return n;
}

// The code point of the (valid) sequence of `n` bytes at s[i].
uint32_t decode_at(const std::string& s, size_t i, size_t n) {
  const auto byte = [&](size_t k) { return static_cast<uint32_t>(static_cast<unsigned char>(s[k])); };
  if (n == 1) return byte(i);
  uint32_t cp = byte(i) & (n == 2 ? 0x1Fu : n == 3 ? 0x0Fu : 0x07u);
  for (size_t k = 1; k < n; ++k) cp = (cp << 6) | (byte(i + k) & 0x3Fu);
  return cp;
}

void append_utf8(std::string& out, uint32_t cp) {
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xC0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += static_cast<char>(0xE0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (cp >> 18));
    out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  }
}

// Byte offsets of the code points of valid UTF-8 text in [begin, end), and `end`.
std::vector<size_t> code_point_offsets(const std::string& s, size_t begin, size_t end) {
  std::vector<size_t> out;
  for (size_t i = begin; i < end;) {
    out.push_back(i);
    const size_t n = sequence_length(s, i);
    i += n == 0 ? 1 : n;
  }
  out.push_back(end);
  return out;
}

// The code point ending right before byte `end` of valid UTF-8 text (0 at the start).
uint32_t code_point_before(const std::string& s, size_t end) {
  if (end == 0) return 0;
  size_t i = end - 1;
  while (i > 0 && (static_cast<unsigned char>(s[i]) & 0xC0) == 0x80) --i;
  const size_t n = sequence_length(s, i);
  return n == 0 ? 0xFFFD : decode_at(s, i, n);
}

uint32_t code_point_at(const std::string& s, size_t i) {
  if (i >= s.size()) return 0;
  const size_t n = sequence_length(s, i);
  return n == 0 ? 0xFFFD : decode_at(s, i, n);
}

// What normalize_text makes of a code point: ' ', '\n', nothing (0), or itself.
uint32_t map_code_point(uint32_t cp) {
  if (cp == '\n' || cp == '\f' || cp == '\v' || cp == 0x85 || cp == 0x2028 || cp == 0x2029) return '\n';
  if (cp == '\t' || cp == 0xA0 || cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200A) || cp == 0x202F || cp == 0x205F ||
      cp == 0x3000)
    return ' ';
  if (cp < 0x20 || cp == 0x7F || (cp >= 0x80 && cp <= 0x9F) || cp == 0xFEFF) return 0;
  return cp;
}

bool is_ascii_alnum(uint32_t c) { return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'); }
// Letters for the de-hyphenation rule: ASCII letters and every non-ASCII code point that is not
// punctuation of Latin-1 or General Punctuation (good enough for "Wort-" / "Straße-").
bool is_letter(uint32_t c) {
  if (c < 0x80) return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
  if (c < 0xC0) return false;
  if (c == 0xD7 || c == 0xF7) return false;
  if (c >= 0x2000 && c <= 0x206F) return false;
  return true;
}
bool is_lowercase_start(uint32_t c) { return (c >= 'a' && c <= 'z') || (c >= 0xDF && c <= 0xFF && c != 0xF7); }

bool is_space_byte(char c) { return c == ' ' || c == '\n'; }

// ---- file names -----------------------------------------------------------------------------------------

std::string lower_ascii(std::string s) {
  for (char& c : s)
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
  return s;
}

std::string base_name(const std::string& path) {
  std::string p = path;
  while (p.size() > 1 && p.back() == '/') p.pop_back();
  const size_t slash = p.rfind('/');
  return slash == std::string::npos ? p : p.substr(slash + 1);
}

std::string extension_of(const std::string& path) {
  const std::string name = base_name(path);
  const size_t dot = name.rfind('.');
  return dot == std::string::npos || dot == 0 ? "" : lower_ascii(name.substr(dot));
}

std::string stem_of(const std::string& path) {
  const std::string name = base_name(path);
  const size_t dot = name.rfind('.');
  std::string stem = dot == std::string::npos || dot == 0 ? name : name.substr(0, dot);
  for (char& c : stem)
    if (!is_ascii_alnum(static_cast<unsigned char>(c)) && c != '.' && c != '_' && c != '-') c = '_';
  return stem.empty() ? "doc" : stem;
}

bool known_extension(const std::string& ext) { return ext == ".txt" || ext == ".md" || ext == ".markdown" || ext == ".pdf"; }

std::string real_path(const std::string& path) {
  char buffer[PATH_MAX];
  if (!::realpath(path.c_str(), buffer)) return path;
  return buffer;
}

bool path_exists(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0;
}

void collect_directory(const std::string& dir, std::set<std::string>& seen_dirs, std::vector<std::string>& out) {
  if (!seen_dirs.insert(real_path(dir)).second) return;  // reached again through a link
  for (const auto& name : list_directory(dir)) {
    if (name.empty() || name[0] == '.') continue;
    const std::string path = (dir.back() == '/' ? dir : dir + "/") + name;
    if (is_directory(path)) collect_directory(path, seen_dirs, out);
    else if (known_extension(extension_of(name))) out.push_back(path);
  }
}

// ---- PDF ------------------------------------------------------------------------------------------------

// poppler reports problems through this hook (by default on stderr); the last message is kept for
// the error that follows a failed load.
struct PopplerMessages {
  std::mutex mutex;
  std::string last;
};
PopplerMessages& poppler_messages() {
  static PopplerMessages m;
  return m;
}
void keep_poppler_message(const std::string& message, void*) {
  auto& m = poppler_messages();
  std::lock_guard<std::mutex> lock(m.mutex);
  m.last = message;
}
void install_poppler_hook() {
  static std::once_flag once;
  std::call_once(once, [] { poppler::set_debug_error_function(&keep_poppler_message, nullptr); });
}

std::string utf8_of(const poppler::ustring& text) {
  const auto bytes = text.to_utf8();
  return std::string(bytes.begin(), bytes.end());
}

// ---- Markdown ---------------------------------------------------------------------------------------------

size_t indent_of(const std::string& line) {
  size_t i = 0;
  while (i < line.size() && line[i] == ' ') ++i;
  return i;
}

std::string trim_right(const std::string& s) {
  size_t e = s.size();
  while (e > 0 && (s[e - 1] == ' ' || s[e - 1] == '\t' || s[e - 1] == '\r')) --e;
  return s.substr(0, e);
}

bool is_ascii_punct(char c) {
  return (c >= '!' && c <= '/') || (c >= ':' && c <= '@') || (c >= '[' && c <= '`') || (c >= '{' && c <= '~');
}

// A fence line: up to 3 spaces, then 3+ backticks or tildes. Returns the fence char and length.
bool fence_of(const std::string& line, char& ch, size_t& len) {
  const size_t i = indent_of(line);
  if (i > 3 || i >= line.size() || (line[i] != '`' && line[i] != '~')) return false;
  size_t e = i;
  while (e < line.size() && line[e] == line[i]) ++e;
  if (e - i < 3) return false;
  if (line[i] == '`' && line.find('`', e) != std::string::npos) return false;  // backticks in the info string
  ch = line[i];
  len = e - i;
  return true;
}

bool closes_fence(const std::string& line, char ch, size_t len) {
  const size_t i = indent_of(line);
  if (i > 3) return false;
  size_t e = i;
  while (e < line.size() && line[e] == ch) ++e;
  if (e - i < len) return false;
  return trim_right(line.substr(e)).empty();
}

// A line of only `c` (after up to 3 spaces), at least `min` of them, spaces allowed if `spaces`.
bool only_char(const std::string& line, char c, size_t min, bool spaces) {
  const size_t i = indent_of(line);
  if (i > 3) return false;
  size_t count = 0;
  for (size_t k = i; k < line.size(); ++k) {
    if (line[k] == c) ++count;
    else if (line[k] == ' ' || line[k] == '\t') {
      if (!spaces && trim_right(line.substr(k)).size() > 0) return false;
    } else if (line[k] != '\r') return false;
  }
  return count >= min;
}

bool is_thematic_break(const std::string& line) {
  return only_char(line, '*', 3, true) || only_char(line, '-', 3, true) || only_char(line, '_', 3, true);
}

bool is_link_definition(const std::string& line) {
  const size_t i = indent_of(line);
  if (i > 3 || i >= line.size() || line[i] != '[' || (i + 1 < line.size() && line[i + 1] == '^')) return false;
  const size_t close = line.find("]:", i + 1);
  if (close == std::string::npos || close == i + 1) return false;
  return !trim_right(line.substr(close + 2)).empty();
}

// Index of the ']' matching the '[' at `open` (nesting, backslash escapes), or npos.
size_t matching_bracket(const std::string& s, size_t open, char o, char c) {
  int depth = 0;
  for (size_t i = open; i < s.size(); ++i) {
    if (s[i] == '\\') {
      ++i;
      continue;
    }
    if (s[i] == o) ++depth;
    else if (s[i] == c && --depth == 0) return i;
  }
  return std::string::npos;
}

bool is_autolink(const std::string& inner) {
  if (inner.empty() || inner.find_first_of(" \t<>") != std::string::npos) return false;
  const size_t colon = inner.find(':');
  if (colon != std::string::npos && colon >= 2) {
    for (size_t k = 0; k < colon; ++k)
      if (!is_ascii_alnum(static_cast<unsigned char>(inner[k])) && inner[k] != '+' && inner[k] != '.' && inner[k] != '-')
        return false;
    return true;
  }
  const size_t at = inner.find('@');
  return at != std::string::npos && at > 0 && inner.find('.', at) != std::string::npos;
}

std::string strip_inline(const std::string& s);

// After the ']' of a link or image text at `close`: "(destination)" or "[ref]"; returns the index
// just past it, or npos when neither follows.
size_t link_tail(const std::string& s, size_t close) {
  const size_t next = close + 1;
  if (next >= s.size()) return std::string::npos;
  if (s[next] == '(') {
    const size_t end = matching_bracket(s, next, '(', ')');
    return end == std::string::npos ? end : end + 1;
  }
  if (s[next] == '[') {
    const size_t end = s.find(']', next + 1);
    return end == std::string::npos ? end : end + 1;
  }
  return std::string::npos;
}

std::string strip_inline(const std::string& s) {
  std::string out;
  const auto space_at = [&](size_t i) {  // line ends count as space
    return i >= s.size() || s[i] == ' ' || s[i] == '\t';
  };
  for (size_t i = 0; i < s.size();) {
    const char c = s[i];
    if (c == '\\' && i + 1 < s.size() && is_ascii_punct(s[i + 1])) {
      out += s[i + 1];
      i += 2;
      continue;
    }
    if (c == '`') {
      size_t run = i;
      while (run < s.size() && s[run] == '`') ++run;
      const std::string ticks = s.substr(i, run - i);
      size_t close = s.find(ticks, run);
      while (close != std::string::npos && close + ticks.size() < s.size() && s[close + ticks.size()] == '`')
        close = s.find(ticks, close + ticks.size() + 1);  // a longer run does not close
      if (close == std::string::npos) {
        out += ticks;
        i = run;
        continue;
      }
      std::string code = s.substr(run, close - run);
      if (code.size() >= 2 && code.front() == ' ' && code.back() == ' ' && code.find_first_not_of(' ') != std::string::npos)
        code = code.substr(1, code.size() - 2);
      out += code;
      i = close + ticks.size();
      continue;
    }
    if ((c == '!' && i + 1 < s.size() && s[i + 1] == '[') || c == '[') {
      const size_t open = c == '!' ? i + 1 : i;
      const size_t close = matching_bracket(s, open, '[', ']');
      const size_t end = close == std::string::npos ? close : link_tail(s, close);
      if (end != std::string::npos) {
        out += strip_inline(s.substr(open + 1, close - open - 1));
        i = end;
        continue;
      }
      out += c;
      ++i;
      continue;
    }
    if (c == '<') {
      const size_t close = s.find('>', i + 1);
      if (close != std::string::npos && is_autolink(s.substr(i + 1, close - i - 1))) {
        out += s.substr(i + 1, close - i - 1);
        i = close + 1;
        continue;
      }
    }
    if (c == '*' || c == '_' || (c == '~' && i + 1 < s.size() && s[i + 1] == '~')) {
      size_t run = i;
      while (run < s.size() && s[run] == c) ++run;
      const bool touches = !space_at(run) || (i > 0 && !space_at(i - 1));
      bool drop = touches;
      if (c == '_' && i > 0 && run < s.size()) {
        const uint32_t before = code_point_before(s, i), after = code_point_at(s, run);
        const bool word_before = is_ascii_alnum(before) || before >= 0x80;
        const bool word_after = is_ascii_alnum(after) || after >= 0x80;
        if (word_before && word_after) drop = false;  // inside a word: snake_case
      }
      if (!drop) out += s.substr(i, run - i);
      i = run;
      continue;
    }
    out += c;
    ++i;
  }
  return out;
}

// An ATX heading's text ("## A ##" -> "A"), or false when the line is no heading.
bool atx_heading(const std::string& line, std::string& text) {
  const size_t i = indent_of(line);
  if (i > 3) return false;
  size_t e = i;
  while (e < line.size() && line[e] == '#') ++e;
  if (e == i || e - i > 6) return false;
  if (e < line.size() && line[e] != ' ' && line[e] != '\t') return false;
  std::string rest = trim_right(line.substr(e));
  size_t h = rest.size();
  while (h > 0 && rest[h - 1] == '#') --h;
  if (h == 0) rest.clear();
  else if (h < rest.size() && (rest[h - 1] == ' ' || rest[h - 1] == '\t')) rest = trim_right(rest.substr(0, h));
  const size_t start = rest.find_first_not_of(" \t");
  text = start == std::string::npos ? "" : rest.substr(start);
  return true;
}

// ---- chunking -------------------------------------------------------------------------------------------

bool is_sentence_end(uint32_t c) { return c == '.' || c == '!' || c == '?' || c == 0x2026; }
bool is_wide_sentence_end(uint32_t c) { return c == 0x3002 || c == 0xFF01 || c == 0xFF1F; }
bool is_closer(uint32_t c) {
  return c == '"' || c == '\'' || c == ')' || c == ']' || c == 0x201D || c == 0x2019 || c == 0xBB || c == 0x300D ||
         c == 0x300F || c == 0xFF09;
}

enum Level { kParagraphs = 0, kSentences = 1, kWords = 2 };

class Chunker {
 public:
  Chunker(const std::string& text, int64_t max_tokens, const TokenCounter& count)
      : text_(text), max_(max_tokens), count_(count) {}

  std::vector<TextSpan> run() {
    for (const auto& p : split(TextSpan{0, text_.size()}, kParagraphs)) add(p, kParagraphs);
    flush();
    return std::move(out_);
  }

 private:
  int64_t tokens(size_t b, size_t e) const { return count_(text_.substr(b, e - b)); }

  void flush() {
    if (open_) out_.push_back(current_);
    open_ = false;
  }

  void add(const TextSpan& unit, int level) {
    if (open_) {
      if (tokens(current_.begin, unit.end) <= max_) {
        current_.end = unit.end;
        return;
      }
      flush();
    }
    if (tokens(unit.begin, unit.end) <= max_) {
      current_ = unit;
      open_ = true;
      return;
    }
    if (level == kWords) {
      cut_word(unit);
      return;
    }
    for (const auto& part : split(unit, level + 1)) add(part, level + 1);
  }

  // A word longer than the limit: the longest prefixes (in code points) that fit, found by
  // bisection; the last piece stays open so that the next words can join it.
  void cut_word(const TextSpan& word) {
    const auto bounds = code_point_offsets(text_, word.begin, word.end);
    size_t first = 0;  // index into bounds
    const size_t last = bounds.size() - 1;
    while (first < last) {
      size_t lo = first + 1, hi = last, best = first;
      while (lo <= hi) {
        const size_t mid = lo + (hi - lo) / 2;
        if (tokens(bounds[first], bounds[mid]) <= max_) {
          best = mid;
          lo = mid + 1;
        } else {
          hi = mid - 1;
        }
      }
      if (best == first)
        throw FormatError("the character at byte " + std::to_string(bounds[first]) + " alone is more than " +
                          std::to_string(max_) + " tokens");
      flush();
      current_ = TextSpan{bounds[first], bounds[best]};
      open_ = true;
      first = best;
    }
  }

  // The units of `span` one level down; what lies between two of them is whitespace, or nothing
  // after a full-width sentence end.
  std::vector<TextSpan> split(const TextSpan& span, int level) const {
    std::vector<TextSpan> units;
    size_t start = span.begin;
    size_t i = span.begin;
    while (i < span.end) {
      if (!is_space_byte(text_[i])) {
        if (level == kSentences) {
          const size_t n = sequence_length(text_, i);
          const size_t next = i + (n == 0 ? 1 : n);
          if (is_wide_sentence_end(code_point_at(text_, i)) && next < span.end && !is_space_byte(text_[next])) {
            units.push_back(TextSpan{start, next});
            start = next;
          }
          i = next;
        } else {
          ++i;
        }
        continue;
      }
      size_t e = i;
      while (e < span.end && is_space_byte(text_[e])) ++e;
      const std::string gap = text_.substr(i, e - i);
      bool cut = false;
      if (level == kParagraphs) cut = gap.find("\n\n") != std::string::npos;
      else if (level == kWords) cut = true;
      else cut = gap.find('\n') != std::string::npos || ends_sentence(start, i);
      if (cut && i > start) {
        units.push_back(TextSpan{start, i});
        start = e;
      }
      i = e;
    }
    if (span.end > start) units.push_back(TextSpan{start, span.end});
    return units;
  }

  // Whether text_[begin, end) ends with a sentence end and optional closing quotes or brackets.
  bool ends_sentence(size_t begin, size_t end) const {
    size_t e = end;
    while (e > begin) {
      const uint32_t c = code_point_before(text_, e);
      size_t n = 1;
      while (e - n > begin && (static_cast<unsigned char>(text_[e - n]) & 0xC0) == 0x80) ++n;
      if (is_closer(c)) {
        e -= n;
        continue;
      }
      return is_sentence_end(c) || is_wide_sentence_end(c);
    }
    return false;
  }

  const std::string& text_;
  int64_t max_;
  const TokenCounter& count_;
  std::vector<TextSpan> out_;
  TextSpan current_;
  bool open_ = false;
};

}  // namespace

// ---- public -------------------------------------------------------------------------------------------

PrepareSourceKind prepare_source_kind(const std::string& path) {
  const std::string ext = extension_of(path);
  if (ext == ".txt") return PrepareSourceKind::kText;
  if (ext == ".md" || ext == ".markdown") return PrepareSourceKind::kMarkdown;
  if (ext == ".pdf") return PrepareSourceKind::kPdf;
  throw FormatError(path + ": unknown kind of file '" + (ext.empty() ? std::string("(no extension)") : ext) +
                    "' (clara_prepare reads .txt, .md, .markdown and .pdf)");
}

std::vector<std::string> expand_prepare_inputs(const std::vector<std::string>& inputs) {
  std::vector<std::string> out;
  std::set<std::string> seen_files, seen_dirs;
  for (const auto& input : inputs) {
    if (input.empty()) throw UsageError("an input path is empty");
    if (!path_exists(input)) throw IoError(input + ": no such file or directory");
    std::vector<std::string> found;
    if (is_directory(input)) {
      collect_directory(input, seen_dirs, found);
      std::sort(found.begin(), found.end());
    } else {
      prepare_source_kind(input);  // refuses other extensions, naming the file
      found.push_back(input);
    }
    for (const auto& f : found)
      if (seen_files.insert(real_path(f)).second) out.push_back(f);
  }
  return out;
}

std::string repair_utf8(const std::string& text, size_t* bad, size_t* first_bad_line) {
  std::string out;
  out.reserve(text.size());
  size_t count = 0, line = 1, first = 0;
  for (size_t i = 0; i < text.size();) {
    const size_t n = sequence_length(text, i);
    if (n == 0) {
      out += "\xEF\xBF\xBD";
      if (count++ == 0) first = line;
      ++i;
      continue;
    }
    if (text[i] == '\n') ++line;
    out.append(text, i, n);
    i += n;
  }
  if (bad) *bad = count;
  if (first_bad_line) *first_bad_line = first;
  return out;
}

std::string normalize_text(const std::string& text, bool join_lines) {
  // Pass 1: line breaks, spaces and control characters.
  std::string mapped;
  mapped.reserve(text.size());
  for (size_t i = 0; i < text.size();) {
    const size_t n = sequence_length(text, i);
    const uint32_t cp = n == 0 ? 0xFFFD : decode_at(text, i, n);
    i += n == 0 ? 1 : n;
    if (cp == '\r') {
      mapped += '\n';
      if (i < text.size() && text[i] == '\n') ++i;
      continue;
    }
    const uint32_t to = map_code_point(cp);
    if (to != 0) append_utf8(mapped, to);
  }
  // Pass 2: lines trimmed, inner runs of spaces collapsed, soft hyphens dropped (in PDF mode one
  // that ends a line is kept for pass 3, which mends the word it breaks).
  const std::string soft_hyphen = "\xC2\xAD";
  std::vector<std::string> lines;
  size_t start = 0;
  while (start <= mapped.size()) {
    size_t end = mapped.find('\n', start);
    if (end == std::string::npos) end = mapped.size();
    size_t last = end;  // end of the line's last non-space, non-soft-hyphen code point
    bool ends_with_soft_hyphen = false;
    while (last > start) {
      if (mapped[last - 1] == ' ') {
        --last;
      } else if (last - start >= 2 && mapped.compare(last - 2, 2, soft_hyphen) == 0) {
        ends_with_soft_hyphen = true;
        last -= 2;
      } else {
        break;
      }
    }
    std::string line;
    bool space = false;
    for (size_t k = start; k < last; ++k) {
      if (mapped[k] == ' ') {
        space = !line.empty();
        continue;
      }
      if (mapped.compare(k, 2, soft_hyphen) == 0) {
        ++k;
        continue;
      }
      if (space) line += ' ';
      space = false;
      line += mapped[k];
    }
    if (join_lines && ends_with_soft_hyphen && !line.empty()) line += soft_hyphen;
    lines.push_back(line);
    start = end + 1;
  }
  // Pass 3: paragraphs.
  std::string out;
  std::string paragraph;
  bool in_paragraph = false;
  const auto end_paragraph = [&] {
    if (!in_paragraph) return;
    if (paragraph.size() >= 2 && paragraph.compare(paragraph.size() - 2, 2, soft_hyphen) == 0)
      paragraph.erase(paragraph.size() - 2);
    if (!out.empty()) out += "\n\n";
    out += paragraph;
    paragraph.clear();
    in_paragraph = false;
  };
  for (const auto& line : lines) {
    if (line.empty()) {
      end_paragraph();
      continue;
    }
    if (!in_paragraph) {
      paragraph = line;
      in_paragraph = true;
      continue;
    }
    if (!join_lines) {
      paragraph += '\n';
      paragraph += line;
      continue;
    }
    // PDF: a hyphenated line break is mended, any other becomes a space.
    const size_t len = paragraph.size();
    if (len >= 2 && paragraph.compare(len - 2, 2, soft_hyphen) == 0) {
      paragraph.erase(len - 2);
    } else if (len >= 2 && paragraph[len - 1] == '-' && is_letter(code_point_before(paragraph, len - 1)) &&
               is_lowercase_start(code_point_at(line, 0))) {
      paragraph.erase(len - 1);
    } else {
      paragraph += ' ';
    }
    paragraph += line;
  }
  end_paragraph();
  return out;
}

std::string strip_markdown(const std::string& input) {
  std::vector<std::string> lines;
  {
    size_t start = 0;
    while (start <= input.size()) {
      size_t end = input.find('\n', start);
      if (end == std::string::npos) end = input.size();
      std::string line = input.substr(start, end - start);
      if (!line.empty() && line.back() == '\r') line.pop_back();
      lines.push_back(line);
      start = end + 1;
    }
  }
  size_t first = 0;
  if (!lines.empty() && trim_right(lines[0]) == "---")  // YAML front matter, when it is closed
    for (size_t k = 1; k < lines.size(); ++k)
      if (trim_right(lines[k]) == "---" || trim_right(lines[k]) == "...") {
        first = k + 1;
        break;
      }

  std::string out;
  bool in_fence = false, in_comment = false;
  char fence_char = 0;
  size_t fence_len = 0;
  bool previous_text = false;  // the previous output line holds text (for setext underlines)
  const auto emit = [&](const std::string& line) {
    out += line;
    out += '\n';
    previous_text = line.find_first_not_of(" \t") != std::string::npos;
  };
  for (size_t k = first; k < lines.size(); ++k) {
    std::string line = lines[k];
    if (in_fence) {
      if (closes_fence(line, fence_char, fence_len)) {
        in_fence = false;
        emit("");
      } else {
        emit(line);
      }
      continue;
    }
    // HTML comments, possibly spanning lines.
    {
      std::string kept;
      size_t i = 0;
      while (i < line.size()) {
        if (in_comment) {
          const size_t close = line.find("-->", i);
          if (close == std::string::npos) {
            i = line.size();
            break;
          }
          in_comment = false;
          i = close + 3;
          continue;
        }
        const size_t open = line.find("<!--", i);
        if (open == std::string::npos) {
          kept += line.substr(i);
          break;
        }
        kept += line.substr(i, open - i);
        in_comment = true;
        i = open + 4;
      }
      const bool had_comment = kept.size() != line.size();
      line = kept;
      if (had_comment && line.find_first_not_of(" \t") == std::string::npos) {
        emit("");
        continue;
      }
    }
    char ch = 0;
    size_t len = 0;
    if (fence_of(line, ch, len)) {
      in_fence = true;
      fence_char = ch;
      fence_len = len;
      emit("");
      continue;
    }
    if (previous_text && (only_char(line, '=', 1, false) || only_char(line, '-', 1, false))) {
      emit("");  // setext underline
      continue;
    }
    if (is_thematic_break(line) || is_link_definition(line)) {
      emit("");
      continue;
    }
    // Blockquote markers.
    for (;;) {
      const size_t i = indent_of(line);
      if (i > 3 || i >= line.size() || line[i] != '>') break;
      line = line.substr(i + 1);
      if (!line.empty() && line[0] == ' ') line.erase(0, 1);
    }
    std::string heading;
    if (atx_heading(line, heading)) {
      emit(strip_inline(heading));
      continue;
    }
    // List bullets '*' and '+' -> '-'.
    {
      const size_t i = line.find_first_not_of(" \t");
      if (i != std::string::npos && (line[i] == '*' || line[i] == '+') && i + 1 < line.size() &&
          (line[i + 1] == ' ' || line[i + 1] == '\t'))
        line[i] = '-';
    }
    emit(strip_inline(line));
  }
  if (!out.empty()) out.pop_back();  // the '\n' after the last line
  return out;
}

std::vector<std::string> read_pdf_pages(const std::string& path) {
  install_poppler_hook();
  // Read the bytes ourselves: a missing or unreadable file is an IoError, not a "corrupt PDF".
  const std::string bytes = read_file(path);
  if (bytes.size() > static_cast<size_t>(INT_MAX)) throw FormatError(path + ": larger than 2 GiB, which poppler cannot read");
  {
    std::lock_guard<std::mutex> lock(poppler_messages().mutex);
    poppler_messages().last.clear();
  }
  std::unique_ptr<poppler::document> doc(poppler::document::load_from_raw_data(bytes.data(), static_cast<int>(bytes.size())));
  const auto why = [&]() {
    std::lock_guard<std::mutex> lock(poppler_messages().mutex);
    return poppler_messages().last.empty() ? std::string() : " (poppler: " + poppler_messages().last + ")";
  };
  if (!doc) throw FormatError(path + ": not a readable PDF: corrupt, truncated or not a PDF" + why());
  // A locked document must not be asked for its pages (poppler 22 dereferences a null catalog).
  if (doc->is_locked())
    throw FormatError(path + ": the PDF is encrypted and needs a password; decrypt it first (e.g. qpdf --decrypt)");
  const int pages = doc->pages();
  if (pages < 1) throw FormatError(path + ": the PDF has no pages");
  std::vector<std::string> out;
  out.reserve(static_cast<size_t>(pages));
  for (int i = 0; i < pages; ++i) {
    std::unique_ptr<poppler::page> page(doc->create_page(i));
    if (!page) throw FormatError(path + ": page " + std::to_string(i + 1) + ": cannot be read" + why());
    out.push_back(utf8_of(page->text(poppler::rectf(), poppler::page::non_raw_non_physical_layout)));
  }
  return out;
}

std::vector<TextSpan> chunk_text(const std::string& text, int64_t max_tokens, const TokenCounter& count) {
  if (max_tokens < 1) throw UsageError("the chunk limit must be at least 1 token, got " + std::to_string(max_tokens));
  if (text.empty()) return {};
  return Chunker(text, max_tokens, count).run();
}

int64_t compressor_token_count(const LlmTokenizer& tokenizer, const std::string& text) {
  const int64_t wrapped = static_cast<int64_t>(tokenizer.encode("<ENC><s>" + text + "</s>").size());
  return wrapped - 3;
}

PrepareResult prepare_documents(const std::vector<std::string>& files, const TokenCounter& count,
                                const PrepareOptions& options) {
  if (options.doc_max_length < 1) throw UsageError("--doc-max-length must be at least 1");
  if (options.min_tokens < 0) throw UsageError("--min-tokens must be at least 0");
  PrepareResult result;
  auto& summary = result.summary;
  std::set<std::string> used_ids, used_stems;

  for (const auto& path : files) {
    const auto kind = prepare_source_kind(path);
    // (page, normalised text) pieces of this file; page 0 for text files.
    std::vector<std::pair<int, std::string>> pieces;
    if (kind == PrepareSourceKind::kPdf) {
      const auto pages = read_pdf_pages(path);
      summary.pdf_pages += static_cast<int64_t>(pages.size());
      for (size_t p = 0; p < pages.size(); ++p) {
        std::string text = normalize_text(repair_utf8(pages[p]), /*join_lines=*/true);
        if (text.empty()) {
          summary.warnings.push_back(path + ": page " + std::to_string(p + 1) +
                                     ": no text (an image-only or empty page; skipped)");
          ++summary.empty_pages;
          continue;
        }
        pieces.emplace_back(static_cast<int>(p + 1), std::move(text));
      }
      if (pieces.empty())
        throw FormatError(path + ": no text on any of its " + std::to_string(pages.size()) +
                          " pages (a scanned or image-only PDF? run OCR on it first)");
    } else {
      std::string raw = read_file(path);
      if (raw.compare(0, 3, "\xEF\xBB\xBF") == 0) raw.erase(0, 3);
      size_t bad = 0, bad_line = 0;
      raw = repair_utf8(raw, &bad, &bad_line);
      if (bad > 0)
        summary.warnings.push_back(path + ":" + std::to_string(bad_line) + ": " + std::to_string(bad) +
                                   " bytes that are not UTF-8 replaced by U+FFFD (convert the file to UTF-8, "
                                   "e.g. iconv -f latin1 -t utf-8)");
      if (kind == PrepareSourceKind::kMarkdown) raw = strip_markdown(raw);
      std::string text = normalize_text(raw, /*join_lines=*/false);
      if (text.empty()) summary.warnings.push_back(path + ": no text (skipped)");
      else pieces.emplace_back(0, std::move(text));
    }
    ++summary.files;

    std::vector<PreparedChunk> chunks;
    for (const auto& [page, text] : pieces) {
      const std::string where = page > 0 ? path + ": page " + std::to_string(page) : path;
      const std::string control = find_clara_control_text(text);
      if (!control.empty())
        throw FormatError(where + ": contains '" + control +
                          "', a CLaRa control token; the tokenizer would read it as that token and corrupt the "
                          "memory-slot layout (remove or rewrite it)");
      std::vector<TextSpan> spans;
      try {
        spans = chunk_text(text, options.doc_max_length, count);
      } catch (const FormatError& e) {
        throw FormatError(where + ": " + e.what());
      }
      int n = 0;
      for (const auto& span : spans) {
        PreparedChunk c;
        c.text = text.substr(span.begin, span.end - span.begin);
        c.tokens = count(c.text);
        c.source = path;
        c.page = page;
        if (c.tokens < options.min_tokens) {
          ++summary.dropped_chunks;
          continue;
        }
        c.id = std::to_string(++n);  // the final id is made below, once the stem is known
        chunks.push_back(std::move(c));
      }
    }
    // The stem: the file's, made unique against every id and stem given out so far.
    const std::string stem = stem_of(path);
    const auto id_for = [](const std::string& s, const PreparedChunk& c) {
      return c.page > 0 ? s + "-p" + std::to_string(c.page) + "-" + c.id : s + "-" + c.id;
    };
    std::string chosen = stem;
    for (int suffix = 2;; ++suffix) {
      bool clash = used_stems.count(chosen) > 0;
      for (const auto& c : chunks) clash = clash || used_ids.count(id_for(chosen, c)) > 0;
      if (!clash) break;
      chosen = stem + "-" + std::to_string(suffix);
    }
    used_stems.insert(chosen);
    for (auto& c : chunks) {
      c.id = id_for(chosen, c);
      used_ids.insert(c.id);
      summary.tokens += c.tokens;
      ++summary.chunks;
      result.chunks.push_back(std::move(c));
    }
  }
  if (result.chunks.empty())
    throw FormatError(files.empty() ? std::string("no .txt, .md, .markdown or .pdf file among the inputs")
                                    : "no chunk to write: the inputs hold no text" +
                                          std::string(summary.dropped_chunks > 0 ? " (every chunk is under --min-tokens)" : ""));
  return result;
}

std::string prepared_chunk_json(const PreparedChunk& chunk) {
  nlohmann::ordered_json j;
  j["id"] = chunk.id;
  j["text"] = chunk.text;
  j["source"] = chunk.source;
  j["page"] = chunk.page > 0 ? nlohmann::ordered_json(chunk.page) : nlohmann::ordered_json(nullptr);
  j["tokens"] = chunk.tokens;
  return j.dump();
}

std::string prepared_stage1_row_json(const PreparedChunk& chunk) {
  nlohmann::ordered_json j;
  j["data_type"] = "paraphrase";
  j["answers"] = nlohmann::ordered_json::array({chunk.text});
  j["docs"] = nlohmann::ordered_json::array({chunk.text});
  return j.dump();
}

}  // namespace hrmclara
