// The LLM tokenizer: SentencePiece plus Hugging Face added tokens and the Mistral-instruct chat
// template. See llm_tokenizer.h for the semantics reproduced (transformers 4.56 / tokenizers 0.22:
// the fast tokenizer converted from tokenizer.model). No torch here.
#include <hrmclara/config.h>
#include <hrmclara/errors.h>
#include <hrmclara/files.h>
#include <hrmclara/llm_tokenizer.h>
#include <hrmclara/tokenizer.h>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <array>
#include <optional>
#include <unordered_map>
#include <unordered_set>

namespace hrmclara {

namespace {

// No vocabulary comes near 2^24 tokens (Gemma's 256k is the largest released); llm_config.h bounds
// vocab_size the same way.
constexpr int kMaxTokenId = 1 << 24;

const std::string kSpaceMarker = "\xE2\x96\x81";      // '▁', SentencePiece's space
const std::string kReplacementChar = "\xEF\xBF\xBD";  // U+FFFD
// U+E000 (private use): in no piece of a Llama / Mistral vocabulary, so SentencePiece never merges
// it with its neighbours (see Impl::encode_piece).
const std::string kSentinel = "\xEE\x80\x80";

// The special-token fields of tokenizer_config.json / special_tokens_map.json, in transformers'
// order (SPECIAL_TOKENS_ATTRIBUTES without additional_special_tokens).
const char* const kNamedTokens[] = {"bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token"};
constexpr size_t kNamedTokenCount = sizeof(kNamedTokens) / sizeof(kNamedTokens[0]);

// ---- JSON fields ------------------------------------------------------------------------------

Json read_json_object(const std::string& path) {
  Json j = read_json_file(path);
  if (!j.is_object()) throw FormatError(path + ": expected a JSON object at the top level");
  return j;
}

bool has_value(const Json& j, const std::string& key) { return j.contains(key) && !j[key].is_null(); }

bool bool_field(const Json& j, const std::string& key, bool fallback, const std::string& path) {
  if (!has_value(j, key)) return fallback;
  if (!j[key].is_boolean()) throw FormatError(path + ": field '" + key + "' must be true or false");
  return j[key].get<bool>();
}

// A special token as a config file names it: a string (special, matched in the raw text), or an
// object with "content" and flags. In tokenizer_config.json transformers takes an object only as a
// serialized AddedToken ("__type": "AddedToken"), built with special = false unless given, so its
// "normalized" defaults to true; special_tokens_map.json's objects are special, so theirs defaults
// to false. Either way the token then is special. Null or "" names no token. `where` is
// "FILE: field 'KEY'".
std::optional<AddedToken> special_token_entry(const Json& v, bool from_special_tokens_map, const std::string& where) {
  AddedToken t;
  if (v.is_null()) return std::nullopt;
  if (v.is_string()) {
    t.content = v.get<std::string>();
  } else if (v.is_object() && v.contains("content") && v["content"].is_string()) {
    if (!from_special_tokens_map && !(v.contains("__type") && v["__type"] == "AddedToken"))
      throw FormatError(where + " is an object without \"__type\": \"AddedToken\", which transformers refuses here; "
                        "give the token as a string");
    t.content = v["content"].get<std::string>();
    t.special = from_special_tokens_map || bool_field(v, "special", false, where);
    t.normalized = bool_field(v, "normalized", !t.special, where);
    t.lstrip = bool_field(v, "lstrip", false, where);
    t.rstrip = bool_field(v, "rstrip", false, where);
  } else {
    throw FormatError(where + " must be a string or an object with a string 'content'");
  }
  t.special = true;
  if (t.content.empty()) return std::nullopt;
  return t;
}

// additional_special_tokens: a list of such entries.
std::vector<AddedToken> special_token_list(const Json& j, bool from_special_tokens_map, const std::string& path) {
  std::vector<AddedToken> out;
  const std::string where = path + ": field 'additional_special_tokens'";
  if (!has_value(j, "additional_special_tokens")) return out;
  if (!j["additional_special_tokens"].is_array()) throw FormatError(where + " must be a list");
  for (const Json& entry : j["additional_special_tokens"]) {
    if (entry.is_null()) throw FormatError(where + " holds null");
    if (auto t = special_token_entry(entry, from_special_tokens_map, where)) out.push_back(*t);
  }
  return out;
}

// ---- text helpers -----------------------------------------------------------------------------

// Length of the Unicode White_Space character (Rust's char::is_whitespace, which tokenizers'
// lstrip / rstrip use) starting at `pos`, or 0.
size_t whitespace_at(const std::string& s, size_t pos) {
  if (pos >= s.size()) return 0;
  const auto c = static_cast<unsigned char>(s[pos]);
  if (c == ' ' || (c >= 0x09 && c <= 0x0D)) return 1;
  auto byte = [&](size_t k) { return pos + k < s.size() ? static_cast<unsigned char>(s[pos + k]) : 0u; };
  if (c == 0xC2 && (byte(1) == 0x85 || byte(1) == 0xA0)) return 2;                   // U+0085, U+00A0
  if (c == 0xE1 && byte(1) == 0x9A && byte(2) == 0x80) return 3;                     // U+1680
  if (c == 0xE2 && byte(1) == 0x80 && (byte(2) <= 0x8A || byte(2) == 0xA8 || byte(2) == 0xA9 || byte(2) == 0xAF))
    return 3;                                                                        // U+2000..200A, 2028, 2029, 202F
  if (c == 0xE2 && byte(1) == 0x81 && byte(2) == 0x9F) return 3;                     // U+205F
  if (c == 0xE3 && byte(1) == 0x80 && byte(2) == 0x80) return 3;                     // U+3000
  return 0;
}

// Start of the run of whitespace characters that ends at `end`, not going below `floor`.
size_t whitespace_run_start(const std::string& s, size_t floor, size_t end) {
  while (end > floor) {
    size_t start = end - 1;  // back over UTF-8 continuation bytes to the character's first byte
    while (start > floor && end - start < 4 && (static_cast<unsigned char>(s[start]) & 0xC0) == 0x80) --start;
    if (whitespace_at(s, start) != end - start) break;
    end = start;
  }
  return end;
}

// End of the run of whitespace characters that starts at `pos`.
size_t whitespace_run_end(const std::string& s, size_t pos) {
  for (size_t n = whitespace_at(s, pos); n > 0; n = whitespace_at(s, pos)) pos += n;
  return pos;
}

// "<0xNN>" -> NN, or -1.
int byte_piece_value(const std::string& piece) {
  if (piece.size() != 6 || piece.compare(0, 3, "<0x") != 0 || piece[5] != '>') return -1;
  int value = 0;
  for (int i = 3; i < 5; ++i) {
    const char c = piece[i];
    int digit = -1;
    if (c >= '0' && c <= '9') digit = c - '0';
    else if (c >= 'A' && c <= 'F') digit = c - 'A' + 10;
    else if (c >= 'a' && c <= 'f') digit = c - 'a' + 10;
    if (digit < 0) return -1;
    value = value * 16 + digit;
  }
  return value;
}

// Strict UTF-8 (no overlong forms, no surrogates, nothing above U+10FFFF, no truncated
// sequence), as Rust's String::from_utf8 accepts it.
bool valid_utf8(const std::string& s) {
  size_t i = 0;
  while (i < s.size()) {
    const auto c = static_cast<unsigned char>(s[i]);
    if (c < 0x80) {
      ++i;
      continue;
    }
    size_t extra;
    unsigned code, min;
    if ((c & 0xE0) == 0xC0) extra = 1, code = c & 0x1Fu, min = 0x80;
    else if ((c & 0xF0) == 0xE0) extra = 2, code = c & 0x0Fu, min = 0x800;
    else if ((c & 0xF8) == 0xF0) extra = 3, code = c & 0x07u, min = 0x10000;
    else return false;
    if (i + extra >= s.size()) return false;
    for (size_t k = 1; k <= extra; ++k) {
      const auto d = static_cast<unsigned char>(s[i + k]);
      if ((d & 0xC0) != 0x80) return false;
      code = (code << 6) | (d & 0x3Fu);
    }
    if (code < min || code > 0x10FFFF || (code >= 0xD800 && code <= 0xDFFF)) return false;
    i += extra + 1;
  }
  return true;
}

std::string replace_all(const std::string& s, const std::string& from, const std::string& to) {
  std::string out;
  size_t start = 0;
  for (size_t pos = s.find(from); pos != std::string::npos; pos = s.find(from, start)) {
    out.append(s, start, pos - start).append(to);
    start = pos + from.size();
  }
  return out.append(s, start, std::string::npos);
}

// The Mistral-instruct template renders user turns as ' [INST] ' + content + ' [/INST]'. Older
// Mistral templates ('[INST] ' without the leading space, assistant + eos + ' ') and v0.3's
// tool-calling one render differently, so they are refused rather than rendered wrongly.
bool is_mistral_instruct_template(const std::string& t) {
  const bool spaced_inst = t.find("' [INST] '") != std::string::npos || t.find("\" [INST] \"") != std::string::npos;
  return spaced_inst && t.find("[/INST]") != std::string::npos && t.find("[AVAILABLE_TOOLS]") == std::string::npos;
}

}  // namespace

struct LlmTokenizer::Impl {
  std::string dir, config_path;
  std::unique_ptr<SentencePiece> spm;
  std::vector<AddedToken> added;               // in the order they were added
  std::unordered_map<std::string, int> id_of;  // added token content -> id
  std::unordered_map<int, size_t> index_of;    // added token id -> index in `added`
  // Matching, rebuilt by reindex(): per added token the text searched for, and per first byte
  // of it the indices into `added`, longest first: raw-text tokens and normalized tokens apart.
  std::vector<std::string> match_text;
  std::array<std::vector<size_t>, 256> raw_tokens, normalized_tokens;
  bool any_normalized = false;
  std::vector<int> sentinel_ids;  // encode(kSentinel) when its last ids are its three bytes, else empty
  int vocab = 0;
  int bos = -1, eos = -1, unk = -1, pad = -1;
  bool add_bos = true, add_eos = false, legacy = true;
  std::string chat_template, chat_template_source;  // empty template: none

  // Registers an added token. `source` names where it came from, for errors. An existing token
  // (same content and id) takes the new flags when `update_flags`, else keeps its own.
  void add(const AddedToken& token, const std::string& source, bool update_flags) {
    if (token.content.empty()) throw FormatError(source + ": an added token has empty content");
    if (token.id < 0) throw FormatError(source + ": added token '" + token.content + "' has a negative id");
    if (token.id >= kMaxTokenId)
      throw FormatError(source + ": added token '" + token.content + "' has id " + std::to_string(token.id) +
                        ", beyond any vocabulary (at most " + std::to_string(kMaxTokenId) + ")");
    const auto same_content = id_of.find(token.content);
    if (same_content != id_of.end()) {
      if (same_content->second != token.id)
        throw FormatError(source + ": added token '" + token.content + "' has id " + std::to_string(token.id) +
                          " but is already id " + std::to_string(same_content->second));
      if (update_flags) added[index_of.at(token.id)] = token;
      return;
    }
    const auto same_id = index_of.find(token.id);
    if (same_id != index_of.end())
      throw FormatError(source + ": id " + std::to_string(token.id) + " is given to both '" +
                        added[same_id->second].content + "' and '" + token.content + "'");
    index_of[token.id] = added.size();
    id_of[token.content] = token.id;
    added.push_back(token);
    vocab = std::max(vocab, token.id + 1);
  }

  // Id of an added token or SentencePiece piece; -1 if neither. A piece whose id an added token
  // took over is no longer reachable by its old text.
  int find(const std::string& token) const {
    const auto it = id_of.find(token);
    if (it != id_of.end()) return it->second;
    if (token.empty()) return -1;
    const int id = spm->piece_to_id(token);
    if (id < 0 || spm->id_to_piece(id) != token || index_of.count(id)) return -1;
    return id;
  }

  // Makes `token.content` a special added token and returns its id: an existing token or piece
  // keeps its id and flags (and becomes special), a new one gets the next id and `token`'s flags.
  int ensure_special(AddedToken token, const std::string& source) {
    int id = find(token.content);
    if (id < 0) id = vocab;
    const auto existing = index_of.find(id);
    if (existing != index_of.end()) {
      added[existing->second].special = true;
      return id;
    }
    token.id = id;
    token.special = true;
    add(token, source, false);
    return id;
  }

  // Rebuilds the matching tables after tokens were added or changed.
  void reindex() {
    match_text.assign(added.size(), "");
    for (auto& bucket : raw_tokens) bucket.clear();
    for (auto& bucket : normalized_tokens) bucket.clear();
    any_normalized = false;
    for (size_t i = 0; i < added.size(); ++i) {
      const AddedToken& t = added[i];
      // Legacy: the normalizer (Prepend '▁', spaces as '▁') runs on a normalized token's content
      // too. Non-legacy there is no normalizer.
      match_text[i] = t.normalized && legacy ? kSpaceMarker + replace_all(t.content, " ", kSpaceMarker) : t.content;
      (t.normalized ? normalized_tokens : raw_tokens)[static_cast<unsigned char>(match_text[i][0])].push_back(i);
      any_normalized |= t.normalized;
    }
    for (auto* table : {&raw_tokens, &normalized_tokens})
      for (auto& bucket : *table)
        std::stable_sort(bucket.begin(), bucket.end(),
                         [&](size_t a, size_t b) { return match_text[a].size() > match_text[b].size(); });
  }

  bool knows(int id) const { return index_of.count(id) || (id >= 0 && id < spm->vocab_size()); }

  std::string token_of(int id) const {
    const auto it = index_of.find(id);
    if (it != index_of.end()) return added[it->second].content;
    if (id < 0 || id >= spm->vocab_size())
      throw UsageError("token id " + std::to_string(id) + " is outside the vocabulary [0, " + std::to_string(vocab) + ")");
    return spm->id_to_piece(id);
  }

  bool special(int id) const {
    if (id < 0) return false;
    if (id == bos || id == eos || id == unk || id == pad) return true;
    const auto it = index_of.find(id);
    return it != index_of.end() && added[it->second].special;
  }

  // Splits `text` on the tokens of `table`, leftmost-longest, as tokenizers' AddedVocabulary does:
  // on_text(begin, end) for the text between tokens (less what lstrip / rstrip swallow),
  // on_token(token) for each match.
  template <class OnText, class OnToken>
  void split(const std::string& text, const std::array<std::vector<size_t>, 256>& table, OnText on_text,
             OnToken on_token) const {
    size_t text_begin = 0, pos = 0;
    while (pos < text.size()) {
      const size_t* found = nullptr;
      for (const size_t& index : table[static_cast<unsigned char>(text[pos])])
        if (text.compare(pos, match_text[index].size(), match_text[index]) == 0) {
          found = &index;
          break;
        }
      if (!found) {
        ++pos;
        continue;
      }
      const AddedToken& token = added[*found];
      const size_t text_end = token.lstrip ? whitespace_run_start(text, text_begin, pos) : pos;
      if (text_end > text_begin) on_text(text_begin, text_end);
      on_token(token);
      pos += match_text[*found].size();
      if (token.rstrip) pos = whitespace_run_end(text, pos);
      text_begin = pos;
    }
    if (text.size() > text_begin) on_text(text_begin, text.size());
  }

  // The BPE model on an already normalized / pre-tokenized piece ('▁' for spaces), adding no
  // '▁' of its own. SentencePiece always adds its dummy prefix, so a piece that starts with '▁'
  // is given without it, and any other is encoded behind kSentinel, whose ids are then dropped:
  // no merge can cross the sentinel, so the rest is the piece's own encoding. (A model without
  // byte fallback turns the sentinel into <unk>; there the piece is encoded with the prefix and a
  // lone leading '▁' dropped, which may merge differently.)
  void encode_piece(const std::string& piece, std::vector<int>& out) const {
    if (piece.empty()) return;
    if (piece.size() > kSpaceMarker.size() && piece.compare(0, kSpaceMarker.size(), kSpaceMarker) == 0) {
      const auto ids = spm->encode(piece.substr(kSpaceMarker.size()));
      out.insert(out.end(), ids.begin(), ids.end());
      return;
    }
    auto ids = spm->encode(sentinel_ids.empty() ? piece : kSentinel + piece);
    size_t skip = 0;
    if (!sentinel_ids.empty() && ids.size() >= sentinel_ids.size() &&
        std::equal(sentinel_ids.begin(), sentinel_ids.end(), ids.begin()))
      skip = sentinel_ids.size();
    else if (sentinel_ids.empty() && !ids.empty() && spm->id_to_piece(ids[0]) == kSpaceMarker)
      skip = 1;
    out.insert(out.end(), ids.begin() + static_cast<std::ptrdiff_t>(skip), ids.end());
  }

  // One piece of text between raw-matched tokens, starting at byte `offset` of the input.
  void encode_text(const std::string& text, size_t offset, std::vector<int>& out) const {
    auto push_token = [&](const AddedToken& t) { out.push_back(t.id); };
    if (legacy) {
      if (!any_normalized) {  // Prepend + Replace, then BPE: what SentencePiece does itself
        const auto ids = spm->encode(text);
        out.insert(out.end(), ids.begin(), ids.end());
        return;
      }
      const std::string normalized = kSpaceMarker + replace_all(text, " ", kSpaceMarker);
      split(normalized, normalized_tokens,
            [&](size_t b, size_t e) { encode_piece(normalized.substr(b, e - b), out); }, push_token);
      return;
    }
    // Non-legacy: normalized tokens are matched as they are (there is no normalizer), then
    // Metaspace(prepend_scheme "first"): spaces become '▁', and a piece at the start of the input
    // gets a '▁' in front unless it begins with one.
    split(text, normalized_tokens,
          [&](size_t b, size_t e) {
            std::string piece = replace_all(text.substr(b, e - b), " ", kSpaceMarker);
            if (offset + b == 0 && piece.compare(0, kSpaceMarker.size(), kSpaceMarker) != 0) piece = kSpaceMarker + piece;
            encode_piece(piece, out);
          },
          push_token);
  }
};

LlmTokenizer::LlmTokenizer(const std::string& dir) : impl_(std::make_unique<Impl>()) {
  auto& m = *impl_;
  m.dir = dir;
  const std::string model_path = dir + "/tokenizer.model";
  if (!file_exists(model_path)) throw IoError(model_path + ": missing (the LLM tokenizer needs a SentencePiece model)");
  m.spm = std::make_unique<SentencePiece>(model_path);
  m.vocab = m.spm->vocab_size();
  m.unk = m.spm->unk_id();
  m.bos = m.spm->bos_id();
  m.eos = m.spm->eos_id();
  {
    const auto ids = m.spm->encode(kSentinel);
    const size_t n = ids.size();
    auto byte_at = [&](size_t k) { return byte_piece_value(m.spm->id_to_piece(ids[n - 3 + k])); };
    if (n >= 3 && byte_at(0) == 0xEE && byte_at(1) == 0x80 && byte_at(2) == 0x80) m.sentinel_ids = ids;
  }
  // The base tokenizer's unknown and control pieces are matched in text, as Mistral's and
  // Llama's tokenizer.json declare them as special added tokens.
  for (int id : {m.unk, m.bos, m.eos})
    if (id >= 0 && id < m.vocab && !m.index_of.count(id)) m.add({m.spm->id_to_piece(id), id, true, false, false, false}, model_path, false);

  m.config_path = dir + "/tokenizer_config.json";
  Json config = Json::object();
  if (file_exists(m.config_path)) config = read_json_object(m.config_path);
  const std::string& cfg = m.config_path;
  m.add_bos = bool_field(config, "add_bos_token", true, cfg);
  m.add_eos = bool_field(config, "add_eos_token", false, cfg);
  m.legacy = bool_field(config, "legacy", true, cfg);

  // Named special tokens and additional_special_tokens, with the file that gave them.
  std::array<std::optional<AddedToken>, kNamedTokenCount> named;
  std::array<std::string, kNamedTokenCount> named_source;
  for (size_t k = 0; k < kNamedTokenCount; ++k) {
    if (!config.contains(kNamedTokens[k])) continue;
    named_source[k] = cfg + ": field '" + kNamedTokens[k] + "'";
    named[k] = special_token_entry(config[kNamedTokens[k]], false, named_source[k]);
  }
  std::vector<AddedToken> extra = special_token_list(config, false, cfg);
  std::string extra_source = cfg + ": field 'additional_special_tokens'";

  if (has_value(config, "added_tokens_decoder")) {
    // transformers then reads neither special_tokens_map.json nor added_tokens.json.
    const Json& decoder = config["added_tokens_decoder"];
    if (!decoder.is_object()) throw FormatError(cfg + ": field 'added_tokens_decoder' must be an object of id -> token");
    std::vector<AddedToken> tokens;
    for (const auto& [key, entry] : decoder.items()) {
      const std::string field = cfg + ": field added_tokens_decoder['" + key + "']";
      AddedToken t;
      size_t used = 0;
      try {
        t.id = std::stoi(key, &used);
      } catch (const std::exception&) {
        used = 0;
      }
      if (used == 0 || used != key.size()) throw FormatError(field + ": the key is not a token id");
      if (!entry.is_object() || !entry.contains("content") || !entry["content"].is_string())
        throw FormatError(field + " needs a string 'content'");
      t.content = entry["content"].get<std::string>();
      t.special = bool_field(entry, "special", false, field);
      t.normalized = bool_field(entry, "normalized", !t.special, field);
      t.lstrip = bool_field(entry, "lstrip", false, field);
      t.rstrip = bool_field(entry, "rstrip", false, field);
      tokens.push_back(t);
    }
    std::sort(tokens.begin(), tokens.end(), [](const AddedToken& a, const AddedToken& b) { return a.id < b.id; });
    for (const auto& t : tokens) m.add(t, cfg, true);
  } else {
    // special_tokens_map.json (older saves): its tokens replace the config's; its additional
    // tokens follow the config's.
    const std::string map_path = dir + "/special_tokens_map.json";
    if (file_exists(map_path)) {
      const Json map = read_json_object(map_path);
      for (size_t k = 0; k < kNamedTokenCount; ++k) {
        if (!map.contains(kNamedTokens[k])) continue;
        named_source[k] = map_path + ": field '" + kNamedTokens[k] + "'";
        named[k] = special_token_entry(map[kNamedTokens[k]], true, named_source[k]);
      }
      if (map.contains("additional_special_tokens")) {
        extra_source = map_path + ": field 'additional_special_tokens'";
        for (const auto& t : special_token_list(map, true, map_path))
          if (std::none_of(extra.begin(), extra.end(), [&](const AddedToken& e) { return e.content == t.content; }))
            extra.push_back(t);
      }
    }
    // added_tokens.json (older saves): token -> id; special (and then not normalized) when one of
    // the special tokens above names it.
    const std::string added_path = dir + "/added_tokens.json";
    if (file_exists(added_path)) {
      std::unordered_set<std::string> special_names;
      for (const auto& t : named)
        if (t) special_names.insert(t->content);
      for (const auto& t : extra) special_names.insert(t.content);
      const Json j = read_json_object(added_path);
      std::vector<AddedToken> tokens;
      for (const auto& [content, id] : j.items()) {
        if (!id.is_number_integer() || id.get<int64_t>() < 0 || id.get<int64_t>() >= kMaxTokenId)
          throw FormatError(added_path + ": the id of '" + content + "' is " + id.dump() + ", not a token id in [0, " +
                            std::to_string(kMaxTokenId) + ")");
        const bool special = special_names.count(content) > 0;
        tokens.push_back({content, id.get<int>(), special, false, false, !special});
      }
      std::sort(tokens.begin(), tokens.end(), [](const AddedToken& a, const AddedToken& b) { return a.id < b.id; });
      for (const auto& t : tokens) m.add(t, added_path, false);
    }
  }

  // Then the special tokens, in transformers' order; one missing from the vocabulary is added
  // after it. pad stays -1 unless named.
  for (size_t k = 0; k < kNamedTokenCount; ++k) {
    if (!named[k]) continue;
    const int id = m.ensure_special(*named[k], named_source[k]);
    const std::string key = kNamedTokens[k];
    if (key == "bos_token") m.bos = id;
    else if (key == "eos_token") m.eos = id;
    else if (key == "unk_token") m.unk = id;
    else if (key == "pad_token") m.pad = id;
  }
  for (const auto& t : extra) m.ensure_special(t, extra_source);
  m.reindex();

  // The chat template: chat_template.jinja (newer transformers saves; it wins, as in
  // transformers), else tokenizer_config.json's, else none.
  if (file_exists(dir + "/chat_template.jinja")) {
    m.chat_template_source = dir + "/chat_template.jinja";
    m.chat_template = read_file(m.chat_template_source, kMaxConfigFileBytes);
  } else if (has_value(config, "chat_template")) {
    const Json& t = config["chat_template"];
    m.chat_template_source = cfg;
    if (t.is_string()) {
      m.chat_template = t.get<std::string>();
    } else if (t.is_array()) {  // [{"name": ..., "template": ...}]: the one named "default"
      for (const Json& entry : t)
        if (entry.is_object() && entry.contains("name") && entry["name"] == "default" && entry.contains("template") &&
            entry["template"].is_string())
          m.chat_template = entry["template"].get<std::string>();
      if (m.chat_template.empty())
        throw FormatError(cfg + ": field 'chat_template' is a list without a template named 'default'");
    } else {
      throw FormatError(cfg + ": field 'chat_template' must be a string or a list of named templates");
    }
  }
}

LlmTokenizer::~LlmTokenizer() = default;
LlmTokenizer::LlmTokenizer(LlmTokenizer&&) noexcept = default;
LlmTokenizer& LlmTokenizer::operator=(LlmTokenizer&&) noexcept = default;

std::vector<int> LlmTokenizer::add_special_tokens(const std::vector<std::string>& tokens) {
  std::vector<int> ids;
  ids.reserve(tokens.size());
  for (const auto& t : tokens) {
    if (t.empty()) throw UsageError("add_special_tokens: a token must not be empty");
    ids.push_back(impl_->ensure_special({t, -1, true, false, false, false}, "add_special_tokens"));
  }
  impl_->reindex();
  return ids;
}

std::vector<int> LlmTokenizer::encode(const std::string& text, bool add_special_tokens) const {
  const auto& m = *impl_;
  std::vector<int> ids;
  if (add_special_tokens && m.add_bos && m.bos >= 0) ids.push_back(m.bos);
  // First the tokens matched in the raw text, then each piece between them.
  m.split(text, m.raw_tokens, [&](size_t b, size_t e) { m.encode_text(text.substr(b, e - b), b, ids); },
          [&](const AddedToken& t) { ids.push_back(t.id); });
  if (add_special_tokens && m.add_eos && m.eos >= 0) ids.push_back(m.eos);
  return ids;
}

std::string LlmTokenizer::decode(const std::vector<int>& ids, bool skip_special_tokens) const {
  const auto& m = *impl_;
  // tokenizers' decoder chain Replace('▁', ' '), ByteFallback, Fuse, Strip(' ', 1, 0), which
  // added tokens go through as well.
  std::string out, bytes;
  auto flush_bytes = [&] {
    if (valid_utf8(bytes)) {
      out += bytes;
    } else {
      for (size_t k = 0; k < bytes.size(); ++k) out += kReplacementChar;  // one per byte of the run
    }
    bytes.clear();
  };
  for (int id : ids) {
    if (skip_special_tokens && m.special(id)) continue;
    // An id the tokenizer has no token for (a model whose embedding rows outnumber its tokenizer's
    // vocabulary can emit one) decodes to nothing, as transformers' fast tokenizers drop it.
    if (!m.knows(id)) continue;
    const std::string token = m.token_of(id);
    const int byte = byte_piece_value(token);
    if (byte >= 0) {
      bytes += static_cast<char>(byte);
      continue;
    }
    flush_bytes();
    out += replace_all(token, kSpaceMarker, " ");
  }
  flush_bytes();
  if (!out.empty() && out[0] == ' ') out.erase(0, 1);
  return out;
}

std::string LlmTokenizer::id_to_token(int id) const { return impl_->token_of(id); }
bool LlmTokenizer::has_token(int id) const { return impl_->knows(id); }
int LlmTokenizer::token_to_id(const std::string& token) const { return impl_->find(token); }
bool LlmTokenizer::is_special(int id) const { return impl_->special(id); }
int LlmTokenizer::vocab_size() const { return impl_->vocab; }
int LlmTokenizer::sentencepiece_size() const { return impl_->spm->vocab_size(); }
int LlmTokenizer::bos_id() const { return impl_->bos; }
int LlmTokenizer::eos_id() const { return impl_->eos; }
int LlmTokenizer::unk_id() const { return impl_->unk; }
int LlmTokenizer::pad_id() const { return impl_->pad; }

void LlmTokenizer::set_pad_id(int id) {
  if (id < 0 || id >= impl_->vocab)
    throw UsageError("pad id " + std::to_string(id) + " is outside the vocabulary [0, " + std::to_string(impl_->vocab) + ")");
  impl_->pad = id;
}

const std::vector<AddedToken>& LlmTokenizer::added_tokens() const { return impl_->added; }

std::string LlmTokenizer::apply_chat_template(const std::vector<ChatMessage>& messages, bool /*add_generation_prompt*/) const {
  const auto& m = *impl_;
  if (m.chat_template.empty())
    throw FormatError(m.dir + ": no chat template (neither chat_template.jinja nor a 'chat_template' in "
                      "tokenizer_config.json; transformers has no default template either)");
  if (!is_mistral_instruct_template(m.chat_template))
    throw FormatError(m.chat_template_source +
                      ": field 'chat_template' is not the Mistral-instruct template (' [INST] ' ... ' [/INST]'), the only one supported");
  if (messages.empty()) throw UsageError("apply_chat_template: the conversation has no messages");
  const bool has_system = messages[0].role == "system";
  const size_t first = has_system ? 1 : 0;
  std::string out = m.bos >= 0 ? m.token_of(m.bos) : "";
  const std::string eos = m.eos >= 0 ? m.token_of(m.eos) : "";
  for (size_t i = first; i < messages.size(); ++i) {
    const auto& msg = messages[i];
    if (msg.role != "user" && msg.role != "assistant")
      throw UsageError("apply_chat_template: message " + std::to_string(i) + " has role '" + msg.role +
                       "'; only user and assistant turns may follow an optional first system message");
    const bool user_turn = (i - first) % 2 == 0;
    if ((msg.role == "user") != user_turn)
      throw UsageError("apply_chat_template: message " + std::to_string(i) + " is '" + msg.role +
                       "'; roles must alternate user/assistant/... after the optional system message");
    if (msg.role == "user") {
      out += " [INST] ";
      if (i == first && has_system) out += messages[0].content + "\n\n";
      out += msg.content + " [/INST]";
    } else {
      out += " " + msg.content + eos;
    }
  }
  return out;
}

}  // namespace hrmclara
