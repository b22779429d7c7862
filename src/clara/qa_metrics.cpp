// Upstream CLaRa's answer and retrieval metrics (see include/hrmclara/qa_metrics.h). Torch-free.
#include <hrmclara/errors.h>
#include <hrmclara/qa_metrics.h>

#include <map>
#include <set>

namespace hrmclara::qa {
namespace {

// ---- UTF-8 <-> code points -------------------------------------------------------------------
// A byte that does not start a valid, shortest-form sequence becomes U+DC80 + byte (Python's
// surrogateescape), and goes back out as that same byte.

constexpr char32_t kEscapeBase = 0xDC00;

std::u32string decode(std::string_view s) {
  std::u32string out;
  out.reserve(s.size());
  size_t i = 0;
  while (i < s.size()) {
    const auto b0 = static_cast<unsigned char>(s[i]);
    if (b0 < 0x80) {
      out.push_back(b0);
      ++i;
      continue;
    }
    int extra = 0;
    char32_t cp = 0, min = 0;
    if ((b0 & 0xE0) == 0xC0) {
      extra = 1, cp = b0 & 0x1F, min = 0x80;
    } else if ((b0 & 0xF0) == 0xE0) {
      extra = 2, cp = b0 & 0x0F, min = 0x800;
    } else if ((b0 & 0xF8) == 0xF0) {
      extra = 3, cp = b0 & 0x07, min = 0x10000;
    }
    bool ok = extra > 0 && i + extra < s.size();
    for (int k = 1; ok && k <= extra; ++k) {
      const auto b = static_cast<unsigned char>(s[i + k]);
      if ((b & 0xC0) != 0x80) ok = false;
      cp = (cp << 6) | (b & 0x3F);
    }
    if (ok && (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))) ok = false;
    if (ok) {
      out.push_back(cp);
      i += 1 + extra;
    } else {
      out.push_back(kEscapeBase + b0);
      ++i;
    }
  }
  return out;
}

void append_utf8(std::string& out, char32_t c) {
  if (c >= kEscapeBase + 0x80 && c <= kEscapeBase + 0xFF) {
    out.push_back(static_cast<char>(c - kEscapeBase));
  } else if (c < 0x80) {
    out.push_back(static_cast<char>(c));
  } else if (c < 0x800) {
    out.push_back(static_cast<char>(0xC0 | (c >> 6)));
    out.push_back(static_cast<char>(0x80 | (c & 0x3F)));
  } else if (c < 0x10000) {
    out.push_back(static_cast<char>(0xE0 | (c >> 12)));
    out.push_back(static_cast<char>(0x80 | ((c >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (c & 0x3F)));
  } else {
    out.push_back(static_cast<char>(0xF0 | (c >> 18)));
    out.push_back(static_cast<char>(0x80 | ((c >> 12) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | ((c >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (c & 0x3F)));
  }
}

std::string encode(const std::u32string& s) {
  std::string out;
  out.reserve(s.size());
  for (char32_t c : s) append_utf8(out, c);
  return out;
}

bool in(char32_t c, char32_t lo, char32_t hi) { return c >= lo && c <= hi; }

// ---- character classes -------------------------------------------------------------------------

// Python's str.isspace().
bool is_space(char32_t c) {
  if (c < 0x80) return c == ' ' || in(c, 0x09, 0x0D) || in(c, 0x1C, 0x1F);
  return c == 0x85 || c == 0xA0 || c == 0x1680 || in(c, 0x2000, 0x200A) || c == 0x2028 || c == 0x2029 ||
         c == 0x202F || c == 0x205F || c == 0x3000;
}

// Python's string.punctuation.
bool is_ascii_punctuation(char32_t c) {
  return in(c, 0x21, 0x2F) || in(c, 0x3A, 0x40) || in(c, 0x5B, 0x60) || in(c, 0x7B, 0x7E);
}

// Python's regex \w on str (alphanumeric or '_'); for non-ASCII text, the ranges of the header.
bool is_word(char32_t c) {
  if (c < 0x80) return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
  if (is_space(c)) return false;
  if (c <= 0xBF)  // Latin-1 controls, punctuation, symbols; a few letters and numbers
    return c == 0xAA || c == 0xB2 || c == 0xB3 || c == 0xB5 || c == 0xB9 || c == 0xBA || in(c, 0xBC, 0xBE);
  if (c == 0xD7 || c == 0xF7) return false;
  if (c < 0x2000) {
    if (in(c, 0x02C2, 0x02C5) || in(c, 0x02D2, 0x02DF) || in(c, 0x02E5, 0x02EB) || c == 0x02ED ||
        in(c, 0x02EF, 0x02FF))
      return false;  // modifier symbols
    if (in(c, 0x0300, 0x036F)) return false;  // combining diacritics
    if (c == 0x0375 || c == 0x037E || c == 0x0384 || c == 0x0385 || c == 0x0387 || c == 0x03F6) return false;
    if (in(c, 0x0482, 0x0489)) return false;
    if (c == 0x0964 || c == 0x0965) return false;  // danda
    return true;
  }
  if (c <= 0x206F) return false;  // General Punctuation
  if (in(c, 0x207A, 0x207E) || in(c, 0x208A, 0x208E)) return false;
  if (in(c, 0x20A0, 0x20FF)) return false;  // currency, combining marks for symbols
  if (in(c, 0x2190, 0x245F)) return false;  // arrows, math operators, technical, control pictures, OCR
  if (in(c, 0x249C, 0x24E9)) return false;  // parenthesized and circled letters (symbols to Python)
  if (in(c, 0x2500, 0x27BF)) return in(c, 0x2776, 0x2793);  // box drawing .. dingbats (but circled digits)
  if (in(c, 0x27C0, 0x2BFF)) return false;  // math symbols, arrows, braille, misc symbols
  if (in(c, 0x2E00, 0x2E7F)) return false;  // supplemental punctuation
  if (in(c, 0x3000, 0x303F))
    return in(c, 0x3005, 0x3007) || in(c, 0x3021, 0x3029) || in(c, 0x3031, 0x3035) || in(c, 0x3038, 0x303C);
  if (in(c, 0x3099, 0x309C) || c == 0x30A0 || c == 0x30FB) return false;
  if (in(c, 0xD800, 0xF8FF)) return false;  // surrogates (escaped bytes), private use
  if (in(c, 0xFE00, 0xFE1F) || in(c, 0xFE30, 0xFE6F) || c == 0xFEFF) return false;  // selectors, forms, BOM
  if (in(c, 0xFF01, 0xFF0F) || in(c, 0xFF1A, 0xFF20) || in(c, 0xFF3B, 0xFF40) || in(c, 0xFF5B, 0xFF65)) return false;
  if (in(c, 0xFFF0, 0xFFFF)) return false;
  if (in(c, 0x1F000, 0x1FAFF)) return in(c, 0x1F100, 0x1F10C);  // emoji and symbols (but digits)
  if (in(c, 0xF0000, 0x10FFFF)) return false;                    // private use planes
  return true;
}

// Letters with case, for the final-sigma rule.
bool is_cased(char32_t c) {
  if (c < 0x80) return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
  if (c == 0xAA || c == 0xB5 || c == 0xBA) return true;
  if (in(c, 0xC0, 0x2AF)) return c != 0xD7 && c != 0xF7;
  if (in(c, 0x370, 0x3FF)) return !(c == 0x374 || c == 0x375 || c == 0x37E || c == 0x384 || c == 0x385 || c == 0x387 || c == 0x3F6);
  if (in(c, 0x400, 0x52F)) return !in(c, 0x482, 0x489);
  if (in(c, 0x531, 0x556) || in(c, 0x561, 0x587)) return true;
  if (in(c, 0x10A0, 0x10FF) || in(c, 0x13A0, 0x13FD) || in(c, 0x1C90, 0x1CBF) || in(c, 0x1E00, 0x1FFF)) return true;
  if (in(c, 0x2160, 0x217F) || in(c, 0x24B6, 0x24E9) || in(c, 0x2C00, 0x2C5F) || in(c, 0xAB70, 0xABBF)) return true;
  if (in(c, 0xFB00, 0xFB06) || in(c, 0xFB13, 0xFB17)) return true;  // ligatures
  if (in(c, 0xFF21, 0xFF3A) || in(c, 0xFF41, 0xFF5A) || in(c, 0x10400, 0x1044F)) return true;
  return false;
}

// Skipped over when looking for the letters around a capital sigma (apostrophes, modifier letters
// and symbols, combining marks, format characters).
bool is_case_ignorable(char32_t c) {
  return c == '\'' || c == '.' || c == ':' || c == '^' || c == '`' || c == 0xA8 || c == 0xAD || c == 0xAF ||
         c == 0xB4 || c == 0xB7 || c == 0xB8 || in(c, 0x2B0, 0x36F) || c == 0x374 || c == 0x375 || c == 0x37A ||
         c == 0x384 || c == 0x385 || c == 0x387 || in(c, 0x200B, 0x200F) || c == 0x2018 || c == 0x2019 ||
         c == 0x2024 || c == 0x2027 || in(c, 0x2060, 0x2064) || in(c, 0x309B, 0x309E) || in(c, 0x30FC, 0x30FE) ||
         in(c, 0xFE00, 0xFE0F) || c == 0xFEFF || c == 0xFF70 || c == 0xFF9E || c == 0xFF9F;
}

// Single-code-point lowercase mapping (U+0130 and U+03A3 are handled by the caller).
char32_t lower_one(char32_t c) {
  auto even_up = [&](char32_t lo, char32_t hi) { return in(c, lo, hi) && (c % 2 == 0); };
  auto odd_up = [&](char32_t lo, char32_t hi) { return in(c, lo, hi) && (c % 2 == 1); };
  if (c < 0x80) return (c >= 'A' && c <= 'Z') ? c + 32 : c;
  if (c < 0x100) return (in(c, 0xC0, 0xDE) && c != 0xD7) ? c + 32 : c;
  if (c < 0x250) {  // Latin Extended-A and the regular parts of Extended-B
    if (c == 0x178) return 0xFF;
    if (odd_up(0x139, 0x148) || odd_up(0x179, 0x17E) || odd_up(0x1CD, 0x1DC)) return c + 1;
    if (even_up(0x100, 0x12F) || even_up(0x132, 0x137) || even_up(0x14A, 0x177)) return c + 1;
    if (even_up(0x1DE, 0x1EF) || even_up(0x1F8, 0x21F) || even_up(0x222, 0x233) || even_up(0x246, 0x24F)) return c + 1;
    if (c == 0x1C4 || c == 0x1C5) return 0x1C6;
    if (c == 0x1C7 || c == 0x1C8) return 0x1C9;
    if (c == 0x1CA || c == 0x1CB) return 0x1CC;
    if (c == 0x1F1 || c == 0x1F2) return 0x1F3;
    if (c == 0x1F4) return 0x1F5;
    // The irregular capitals of Extended-B (African and phonetic letters): capital, small.
    static constexpr char32_t kIrregular[][2] = {
        {0x181, 0x253}, {0x182, 0x183}, {0x184, 0x185}, {0x186, 0x254}, {0x187, 0x188}, {0x189, 0x256},
        {0x18A, 0x257}, {0x18B, 0x18C}, {0x18E, 0x1DD}, {0x18F, 0x259}, {0x190, 0x25B}, {0x191, 0x192},
        {0x193, 0x260}, {0x194, 0x263}, {0x196, 0x269}, {0x197, 0x268}, {0x198, 0x199}, {0x19C, 0x26F},
        {0x19D, 0x272}, {0x19F, 0x275}, {0x1A0, 0x1A1}, {0x1A2, 0x1A3}, {0x1A4, 0x1A5}, {0x1A6, 0x280},
        {0x1A7, 0x1A8}, {0x1A9, 0x283}, {0x1AC, 0x1AD}, {0x1AE, 0x288}, {0x1AF, 0x1B0}, {0x1B1, 0x28A},
        {0x1B2, 0x28B}, {0x1B3, 0x1B4}, {0x1B5, 0x1B6}, {0x1B7, 0x292}, {0x1B8, 0x1B9}, {0x1BC, 0x1BD},
        {0x1F6, 0x195}, {0x1F7, 0x1BF}, {0x220, 0x19E}, {0x23A, 0x2C65}, {0x23B, 0x23C}, {0x23D, 0x19A},
        {0x23E, 0x2C66}, {0x241, 0x242}, {0x243, 0x180}, {0x244, 0x289}, {0x245, 0x28C}};
    for (const auto& pair : kIrregular)
      if (pair[0] == c) return pair[1];
    return c;
  }
  if (c < 0x400) {  // Greek
    if (even_up(0x370, 0x373) || c == 0x376) return c + 1;
    if (c == 0x37F) return 0x3F3;
    if (c == 0x386) return 0x3AC;
    if (in(c, 0x388, 0x38A)) return c + 37;
    if (c == 0x38C) return 0x3CC;
    if (c == 0x38E || c == 0x38F) return c + 63;
    if (in(c, 0x391, 0x3A1) || in(c, 0x3A3, 0x3AB)) return c + 32;
    if (c == 0x3CF) return 0x3D7;
    if (even_up(0x3D8, 0x3EF)) return c + 1;
    if (c == 0x3F4) return 0x3B8;
    if (c == 0x3F7 || c == 0x3FA) return c + 1;
    if (c == 0x3F9) return 0x3F2;
    if (in(c, 0x3FD, 0x3FF)) return c - 130;
    return c;
  }
  if (c < 0x530) {  // Cyrillic
    if (in(c, 0x400, 0x40F)) return c + 80;
    if (in(c, 0x410, 0x42F)) return c + 32;
    if (even_up(0x460, 0x481) || even_up(0x48A, 0x4BF) || odd_up(0x4C1, 0x4CE) || even_up(0x4D0, 0x52F)) return c + 1;
    if (c == 0x4C0) return 0x4CF;
    return c;
  }
  if (in(c, 0x531, 0x556)) return c + 48;  // Armenian
  if (in(c, 0x10A0, 0x10C5) || c == 0x10C7 || c == 0x10CD) return c + 0x2D00 - 0x10A0;  // Georgian
  if (in(c, 0x1C90, 0x1CBA) || in(c, 0x1CBD, 0x1CBF)) return c - 0x1C90 + 0x10D0;      // Georgian Mtavruli
  if (in(c, 0x13A0, 0x13EF)) return c - 0x13A0 + 0xAB70;                               // Cherokee
  if (in(c, 0x13F0, 0x13F5)) return c + 8;
  if (in(c, 0x1F00, 0x1FFF)) {  // Greek Extended
    static constexpr char32_t kPairs[][2] = {{0x1FBA, 0x1F70}, {0x1FBB, 0x1F71}, {0x1FBC, 0x1FB3}, {0x1FC8, 0x1F72},
                                             {0x1FC9, 0x1F73}, {0x1FCA, 0x1F74}, {0x1FCB, 0x1F75}, {0x1FCC, 0x1FC3},
                                             {0x1FDA, 0x1F76}, {0x1FDB, 0x1F77}, {0x1FEA, 0x1F7A}, {0x1FEB, 0x1F7B},
                                             {0x1FEC, 0x1FE5}, {0x1FF8, 0x1F78}, {0x1FF9, 0x1F79}, {0x1FFA, 0x1F7C},
                                             {0x1FFB, 0x1F7D}, {0x1FFC, 0x1FF3}};
    for (const auto& pair : kPairs)
      if (pair[0] == c) return pair[1];
    const bool upper_half = (c & 0xF) >= 8;
    const bool unassigned = c == 0x1F1E || c == 0x1F1F || c == 0x1F4E || c == 0x1F4F || c == 0x1F58 ||
                            c == 0x1F5A || c == 0x1F5C || c == 0x1F5E;
    if (upper_half && !unassigned && (in(c, 0x1F08, 0x1F6F) || in(c, 0x1F88, 0x1FAF) || in(c, 0x1FB8, 0x1FB9) ||
                                      in(c, 0x1FD8, 0x1FD9) || in(c, 0x1FE8, 0x1FE9)))
      return c - 8;
    return c;
  }
  if (in(c, 0x2C00, 0x2C2F)) return c + 48;  // Glagolitic
  if (in(c, 0x10400, 0x10427)) return c + 40;  // Deseret
  if (even_up(0x1E00, 0x1E95) || even_up(0x1EA0, 0x1EFF)) return c + 1;
  if (c == 0x1E9E) return 0xDF;
  if (c == 0x2126) return 0x3C9;  // Ohm sign
  if (c == 0x212A) return 'k';    // Kelvin sign
  if (c == 0x212B) return 0xE5;   // Angstrom sign
  if (in(c, 0x2160, 0x216F)) return c + 16;  // Roman numerals
  if (in(c, 0x24B6, 0x24CF)) return c + 26;  // circled letters
  if (in(c, 0xFF21, 0xFF3A)) return c + 32;  // fullwidth Latin
  return c;
}

std::u32string lower_cps(const std::u32string& s) {
  std::u32string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size(); ++i) {
    const char32_t c = s[i];
    if (c == 0x130) {  // İ -> i + combining dot above
      out.push_back('i');
      out.push_back(0x307);
    } else if (c == 0x3A3) {  // Σ: final sigma after a cased letter not followed by one
      size_t j = i;
      while (j > 0 && is_case_ignorable(s[j - 1])) --j;
      bool final_sigma = j > 0 && is_cased(s[j - 1]);
      if (final_sigma) {
        size_t k = i + 1;
        while (k < s.size() && is_case_ignorable(s[k])) ++k;
        final_sigma = k == s.size() || !is_cased(s[k]);
      }
      out.push_back(final_sigma ? 0x3C2 : 0x3C3);
    } else {
      out.push_back(lower_one(c));
    }
  }
  return out;
}

std::vector<std::u32string> split_cps(const std::u32string& s) {
  std::vector<std::u32string> words;
  size_t i = 0;
  while (i < s.size()) {
    while (i < s.size() && is_space(s[i])) ++i;
    if (i == s.size()) break;
    size_t j = i;
    while (j < s.size() && !is_space(s[j])) ++j;
    words.emplace_back(s.substr(i, j - i));
    i = j;
  }
  return words;
}

bool is_article(const std::u32string& s, size_t begin, size_t end) {
  const size_t n = end - begin;
  if (n == 1) return s[begin] == 'a';
  if (n == 2) return s[begin] == 'a' && s[begin + 1] == 'n';
  if (n == 3) return s[begin] == 't' && s[begin + 1] == 'h' && s[begin + 2] == 'e';
  return false;
}

std::string normalized(std::string_view text) {
  const std::u32string lowered = lower_cps(decode(text));
  std::u32string kept;
  kept.reserve(lowered.size());
  for (char32_t c : lowered)
    if (!is_ascii_punctuation(c)) kept.push_back(c);
  // \b(a|an|the)\b can only match a whole run of word characters.
  std::u32string no_articles;
  no_articles.reserve(kept.size());
  size_t i = 0;
  while (i < kept.size()) {
    if (!is_word(kept[i])) {
      no_articles.push_back(kept[i++]);
      continue;
    }
    size_t j = i;
    while (j < kept.size() && is_word(kept[j])) ++j;
    if (is_article(kept, i, j))
      no_articles.push_back(' ');
    else
      no_articles.append(kept, i, j - i);
    i = j;
  }
  std::string out;
  for (const auto& word : split_cps(no_articles)) {
    if (!out.empty()) out.push_back(' ');
    out += encode(word);
  }
  return out;
}

std::vector<std::string> split_normalized(const std::string& norm) {
  // Normalized text is single-space separated with no leading or trailing space.
  std::vector<std::string> tokens;
  size_t i = 0;
  while (i < norm.size()) {
    size_t j = norm.find(' ', i);
    if (j == std::string::npos) j = norm.size();
    tokens.push_back(norm.substr(i, j - i));
    i = j + 1;
  }
  return tokens;
}

std::string scored_form(std::string_view text) { return normalize_answer(bool_mapping(text)); }

bool is_yes_no(const std::string& s) { return s == "yes" || s == "no" || s == "noanswer"; }

double f1_of_normalized(const std::string& pred, const std::string& gold) {
  if (is_yes_no(pred) && pred != gold) return 0.0;
  if (is_yes_no(gold) && pred != gold) return 0.0;
  const auto pred_tokens = split_normalized(pred), gold_tokens = split_normalized(gold);
  std::map<std::string, int64_t> pred_count, gold_count;
  for (const auto& t : pred_tokens) ++pred_count[t];
  for (const auto& t : gold_tokens) ++gold_count[t];
  int64_t same = 0;
  for (const auto& [token, count] : pred_count) {
    const auto it = gold_count.find(token);
    if (it != gold_count.end()) same += std::min(count, it->second);
  }
  if (same == 0) return 0.0;
  const double precision = static_cast<double>(same) / static_cast<double>(pred_tokens.size());
  const double recall = static_cast<double>(same) / static_cast<double>(gold_tokens.size());
  return (2 * precision * recall) / (precision + recall);
}

bool cover_of_normalized(const std::string& pred, const std::string& gold) {
  const auto pred_tokens = split_normalized(pred);
  const std::set<std::string> present(pred_tokens.begin(), pred_tokens.end());
  for (const auto& t : split_normalized(gold))
    if (!present.count(t)) return false;
  return true;
}

void check_ks(const std::vector<int64_t>& ks) {
  if (ks.empty()) throw UsageError("retrieval metrics: no k given");
  for (int64_t k : ks)
    if (k < 1) throw UsageError("retrieval metrics: k must be at least 1 (got " + std::to_string(k) + ")");
}

// Adds one row's recall and precision at each k to `sums`.
void add_row(std::vector<RetrievalAtK>& sums, const std::vector<int64_t>& topk, const std::vector<int64_t>& pos) {
  const std::set<int64_t> positives(pos.begin(), pos.end());
  for (auto& s : sums) {
    const size_t take = std::min<size_t>(topk.size(), static_cast<size_t>(s.k));
    const std::set<int64_t> top(topk.begin(), topk.begin() + static_cast<std::ptrdiff_t>(take));
    int64_t hits = 0;
    for (int64_t i : top) hits += positives.count(i) ? 1 : 0;
    s.recall += positives.empty() ? 0.0 : static_cast<double>(hits) / static_cast<double>(positives.size());
    s.precision += static_cast<double>(hits) / static_cast<double>(s.k);
  }
}

std::vector<RetrievalAtK> zeros_at(const std::vector<int64_t>& ks) {
  std::vector<RetrievalAtK> at;
  for (int64_t k : ks) at.push_back({k, 0.0, 0.0});
  return at;
}

}  // namespace

// ---- one answer --------------------------------------------------------------------------------

std::string python_lower(std::string_view text) { return encode(lower_cps(decode(text))); }

std::vector<std::string> python_split(std::string_view text) {
  std::vector<std::string> out;
  for (const auto& w : split_cps(decode(text))) out.push_back(encode(w));
  return out;
}

std::string bool_mapping(std::string_view text) {
  if (text == "True") return "yes";
  if (text == "False") return "no";
  return std::string(text);
}

std::string normalize_answer(std::string_view text) { return normalized(text); }

bool exact_match(std::string_view prediction, std::string_view gold) {
  return scored_form(prediction) == scored_form(gold);
}

bool cover_exact_match(std::string_view prediction, std::string_view gold) {
  return cover_of_normalized(scored_form(prediction), scored_form(gold));
}

double f1_score(std::string_view prediction, std::string_view gold) {
  return f1_of_normalized(scored_form(prediction), scored_form(gold));
}

AnswerScores score_answer(std::string_view prediction, std::string_view gold) {
  const std::string p = scored_form(prediction), g = scored_form(gold);
  return {p == g, cover_of_normalized(p, g), f1_of_normalized(p, g)};
}

// ---- a result list -----------------------------------------------------------------------------

const RetrievalAtK& RetrievalMetrics::at_k(int64_t k) const {
  for (const auto& a : at)
    if (a.k == k) return a;
  throw UsageError("retrieval metrics: k = " + std::to_string(k) + " was not computed");
}

BasicMetrics basic_metrics(const std::vector<QaResult>& results, GoldPolicy policy) {
  if (results.empty()) throw UsageError("QA metrics: no results to score");
  // Summed in row order and divided at the end, as upstream does (same rounding).
  double f1_total = 0.0;
  int64_t acc_total = 0, em_total = 0, words_total = 0;
  for (size_t r = 0; r < results.size(); ++r) {
    const auto& row = results[r];
    if (row.golds.empty()) throw UsageError("QA metrics: result " + std::to_string(r) + " has no gold answer");
    const std::string pred = scored_form(row.prediction);
    if (policy == GoldPolicy::kFirst) {
      const std::string gold = scored_form(row.golds.front());
      acc_total += cover_of_normalized(pred, gold) ? 1 : 0;
      f1_total += f1_of_normalized(pred, gold);
      em_total += pred == gold ? 1 : 0;
    } else {
      bool acc = false, em = false;
      double f1 = 0.0;
      for (const auto& g : row.golds) {
        const std::string gold = scored_form(g);
        acc = acc || cover_of_normalized(pred, gold);
        em = em || pred == gold;
        f1 = std::max(f1, f1_of_normalized(pred, gold));
      }
      acc_total += acc ? 1 : 0;
      f1_total += f1;
      em_total += em ? 1 : 0;
    }
    words_total += static_cast<int64_t>(split_cps(decode(row.prediction)).size());
  }
  const double n = static_cast<double>(results.size());
  BasicMetrics m;
  m.f1 = f1_total / n;
  m.acc = static_cast<double>(acc_total) / n;
  m.em = static_cast<double>(em_total) / n;
  m.avg_output_length = static_cast<double>(words_total) / n;
  m.count = static_cast<int64_t>(results.size());
  return m;
}

RetrievalMetrics retrieval_metrics(const std::vector<QaResult>& results, const std::vector<int64_t>& ks) {
  check_ks(ks);
  if (results.empty()) throw UsageError("retrieval metrics: no results to score");
  RetrievalMetrics m;
  m.at = zeros_at(ks);
  for (const auto& row : results) add_row(m.at, row.topk_idx, row.pos_index);
  const double n = static_cast<double>(results.size());
  for (auto& a : m.at) {
    a.recall /= n;
    a.precision /= n;
  }
  m.samples = static_cast<int64_t>(results.size());
  return m;
}

RetrievalMetrics trainer_retrieval_metrics(const std::vector<std::vector<int64_t>>& pos_indices,
                                           const std::vector<std::vector<int64_t>>& pred_indices,
                                           const std::vector<int64_t>& ks) {
  check_ks(ks);
  RetrievalMetrics m;
  m.at = zeros_at(ks);
  // zip(): the shorter list decides.
  const size_t rows = std::min(pos_indices.size(), pred_indices.size());
  for (size_t r = 0; r < rows; ++r) {
    if (pos_indices[r].empty()) continue;
    ++m.samples;
    add_row(m.at, pred_indices[r], pos_indices[r]);
  }
  if (m.samples > 0) {
    const double n = static_cast<double>(m.samples);
    for (auto& a : m.at) {
      a.recall /= n;
      a.precision /= n;
    }
  }
  return m;
}

std::vector<std::pair<std::string, double>> Stage2Metrics::named() const {
  std::vector<std::pair<std::string, double>> out = {
      {"f1", basic.f1}, {"acc", basic.acc}, {"em", basic.em}, {"avg_output_length", basic.avg_output_length}};
  for (const auto& a : retrieval.at) out.emplace_back("recall@" + std::to_string(a.k), a.recall);
  for (const auto& a : retrieval.at) out.emplace_back("precision@" + std::to_string(a.k), a.precision);
  return out;
}

Stage2Metrics stage2_metrics(const std::vector<QaResult>& results, const std::vector<int64_t>& ks, GoldPolicy policy) {
  return {basic_metrics(results, policy), retrieval_metrics(results, ks)};
}

std::vector<std::pair<std::string, double>> trainer_named(const RetrievalMetrics& metrics) {
  std::vector<std::pair<std::string, double>> out;
  for (const auto& a : metrics.at) out.emplace_back("recall_" + std::to_string(a.k), a.recall);
  for (const auto& a : metrics.at) out.emplace_back("precision_" + std::to_string(a.k), a.precision);
  return out;
}

}  // namespace hrmclara::qa
