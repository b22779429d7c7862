// The LLM tokenizer: SentencePiece plus Hugging Face added tokens and the Mistral-instruct chat
// template. See llm_tokenizer.h for the semantics reproduced (transformers 4.56 / tokenizers 0.22
// with a legacy Mistral tokenizer.json). No torch here.
#include <hrmclara/config.h>
#include <hrmclara/errors.h>
#include <hrmclara/files.h>
#include <hrmclara/llm_tokenizer.h>
#include <hrmclara/tokenizer.h>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <array>
#include <unordered_map>

namespace hrmclara {

namespace {

const std::string kSpaceMarker = "\xE2\x96\x81";      // '▁', SentencePiece's space
const std::string kReplacementChar = "\xEF\xBF\xBD";  // U+FFFD

// ---- JSON fields ------------------------------------------------------------------------------

Json read_json_object(const std::string& path) {
  Json j = read_json_file(path);
  if (!j.is_object()) throw FormatError(path + ": expected a JSON object at the top level");
  return j;
}

bool has_value(const Json& j, const std::string& key) { return j.contains(key) && !j[key].is_null(); }

// A token field: "<s>", {"content": "<s>", ...}; "" when absent or null.
std::string token_field(const Json& j, const std::string& key, const std::string& path) {
  if (!has_value(j, key)) return "";
  const Json& v = j[key];
  if (v.is_string()) return v.get<std::string>();
  if (v.is_object() && v.contains("content") && v["content"].is_string()) return v["content"].get<std::string>();
  throw FormatError(path + ": field '" + key + "' must be a string or an object with a string 'content'");
}

bool bool_field(const Json& j, const std::string& key, bool fallback, const std::string& path) {
  if (!has_value(j, key)) return fallback;
  if (!j[key].is_boolean()) throw FormatError(path + ": field '" + key + "' must be true or false");
  return j[key].get<bool>();
}

std::vector<std::string> token_list_field(const Json& j, const std::string& key, const std::string& path) {
  std::vector<std::string> out;
  if (!has_value(j, key)) return out;
  if (!j[key].is_array()) throw FormatError(path + ": field '" + key + "' must be a list");
  for (const Json& t : j[key]) {
    if (t.is_string()) out.push_back(t.get<std::string>());
    else if (t.is_object() && t.contains("content") && t["content"].is_string()) out.push_back(t["content"].get<std::string>());
    else throw FormatError(path + ": field '" + key + "' holds an entry that is neither a string nor {\"content\": ...}");
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
  std::array<std::vector<size_t>, 256> by_first_byte;  // indices into `added`, longest first
  int vocab = 0;
  int bos = -1, eos = -1, unk = -1, pad = -1;
  bool add_bos = true, add_eos = false, legacy = true;
  std::string chat_template, chat_template_source;  // empty template: the default Mistral one
  size_t unk_prefix_length = 0;                     // pieces of encode(unk piece), non-legacy only

  // Registers an added token. `source` names where it came from, for errors. An existing token
  // (same content and id) takes the new flags when `update_flags`, else keeps its own.
  void add(const AddedToken& token, const std::string& source, bool update_flags) {
    if (token.content.empty()) throw FormatError(source + ": an added token has empty content");
    if (token.id < 0) throw FormatError(source + ": added token '" + token.content + "' has a negative id");
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
    const size_t index = added.size();
    added.push_back(token);
    id_of[token.content] = token.id;
    index_of[token.id] = index;
    auto& bucket = by_first_byte[static_cast<unsigned char>(token.content[0])];
    bucket.insert(std::upper_bound(bucket.begin(), bucket.end(), index,
                                   [&](size_t a, size_t b) { return added[a].content.size() > added[b].content.size(); }),
                  index);
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

  // Registers `content` as a special added token (new ones get the next id); returns its id.
  int ensure_special(const std::string& content, const std::string& source) {
    int id = find(content);
    if (id < 0) id = vocab;
    const auto existing = index_of.find(id);
    if (existing != index_of.end()) {
      added[existing->second].special = true;
      return id;
    }
    add({content, id, true, false, false}, source, false);
    return id;
  }

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

  // The longest added token that starts at `pos`, or null.
  const AddedToken* match_at(const std::string& text, size_t pos) const {
    for (size_t index : by_first_byte[static_cast<unsigned char>(text[pos])]) {
      const auto& t = added[index];
      if (text.compare(pos, t.content.size(), t.content) == 0) return &t;
    }
    return nullptr;
  }

  // SentencePiece on one text segment. Legacy: with its own dummy-prefix '▁'. Non-legacy: the
  // whole text got one '▁' up front, so the segment is encoded as if it followed the unknown
  // piece (encode(unk + segment), dropping unk's pieces), as transformers' LlamaTokenizer does.
  void encode_segment(const std::string& text, std::vector<int>& out) const {
    if (legacy) {
      const auto ids = spm->encode(text);
      out.insert(out.end(), ids.begin(), ids.end());
      return;
    }
    const auto ids = spm->encode(spm->id_to_piece(spm->unk_id()) + text);
    const size_t skip = std::min(unk_prefix_length, ids.size());
    out.insert(out.end(), ids.begin() + static_cast<std::ptrdiff_t>(skip), ids.end());
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
  // The base tokenizer's unknown and control pieces are matched in text, as Mistral's and
  // Llama's tokenizer.json declare them as special added tokens.
  for (int id : {m.unk, m.bos, m.eos})
    if (id >= 0 && id < m.vocab && !m.index_of.count(id)) m.add({m.spm->id_to_piece(id), id, true, false, false}, model_path, false);

  m.config_path = dir + "/tokenizer_config.json";
  Json config = Json::object();
  if (file_exists(m.config_path)) config = read_json_object(m.config_path);
  const std::string& cfg = m.config_path;

  if (has_value(config, "added_tokens_decoder")) {
    const Json& decoder = config["added_tokens_decoder"];
    if (!decoder.is_object()) throw FormatError(cfg + ": field 'added_tokens_decoder' must be an object of id -> token");
    std::vector<AddedToken> tokens;
    for (const auto& [key, entry] : decoder.items()) {
      const std::string field = "added_tokens_decoder['" + key + "']";
      AddedToken t;
      size_t used = 0;
      try {
        t.id = std::stoi(key, &used);
      } catch (const std::exception&) {
        used = 0;
      }
      if (used == 0 || used != key.size()) throw FormatError(cfg + ": field " + field + ": the key is not a token id");
      if (!entry.is_object() || !entry.contains("content") || !entry["content"].is_string())
        throw FormatError(cfg + ": field " + field + " needs a string 'content'");
      t.content = entry["content"].get<std::string>();
      t.special = bool_field(entry, "special", false, cfg + ": field " + field);
      t.lstrip = bool_field(entry, "lstrip", false, cfg + ": field " + field);
      t.rstrip = bool_field(entry, "rstrip", false, cfg + ": field " + field);
      tokens.push_back(t);
    }
    std::sort(tokens.begin(), tokens.end(), [](const AddedToken& a, const AddedToken& b) { return a.id < b.id; });
    for (const auto& t : tokens) m.add(t, cfg, true);
  }

  // added_tokens.json (older saves): token -> id. Entries the config declared keep its flags;
  // the others are plain (not special) unless named as special tokens below.
  const std::string added_path = dir + "/added_tokens.json";
  if (file_exists(added_path)) {
    const Json j = read_json_object(added_path);
    std::vector<AddedToken> tokens;
    for (const auto& [content, id] : j.items()) {
      if (!id.is_number_integer()) throw FormatError(added_path + ": the id of '" + content + "' is not an integer");
      tokens.push_back({content, id.get<int>(), false, false, false});
    }
    std::sort(tokens.begin(), tokens.end(), [](const AddedToken& a, const AddedToken& b) { return a.id < b.id; });
    for (const auto& t : tokens) m.add(t, added_path, false);
  }

  const std::string map_path = dir + "/special_tokens_map.json";
  Json special_map = Json::object();
  if (file_exists(map_path)) special_map = read_json_object(map_path);

  // Named special tokens (tokenizer_config.json wins over special_tokens_map.json), then the
  // additional ones, in transformers' order. One missing from the vocabulary is added after it,
  // as transformers does.
  for (const char* key : {"bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token"}) {
    std::string source = cfg, content = token_field(config, key, cfg);
    if (content.empty() && !has_value(config, key)) source = map_path, content = token_field(special_map, key, map_path);
    if (content.empty()) continue;  // pad stays -1 unless named
    const int id = m.ensure_special(content, source + ": field '" + key + "'");
    const std::string k = key;
    if (k == "bos_token") m.bos = id;
    else if (k == "eos_token") m.eos = id;
    else if (k == "unk_token") m.unk = id;
    else if (k == "pad_token") m.pad = id;
  }
  const bool extra_in_config = has_value(config, "additional_special_tokens");
  const std::string extra_source = extra_in_config ? cfg : map_path;
  for (const auto& t : token_list_field(extra_in_config ? config : special_map, "additional_special_tokens", extra_source))
    m.ensure_special(t, extra_source + ": field 'additional_special_tokens'");

  m.add_bos = bool_field(config, "add_bos_token", true, cfg);
  m.add_eos = bool_field(config, "add_eos_token", false, cfg);
  m.legacy = bool_field(config, "legacy", true, cfg);
  if (!m.legacy) m.unk_prefix_length = m.spm->encode(m.spm->id_to_piece(m.spm->unk_id())).size();

  // The chat template: tokenizer_config.json, else chat_template.jinja / chat_template.json
  // (newer transformers saves), else none (the default Mistral-instruct one).
  if (has_value(config, "chat_template")) {
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
  } else if (file_exists(dir + "/chat_template.jinja")) {
    m.chat_template_source = dir + "/chat_template.jinja";
    m.chat_template = read_file(m.chat_template_source);
  } else if (file_exists(dir + "/chat_template.json")) {
    m.chat_template_source = dir + "/chat_template.json";
    const Json j = read_json_object(m.chat_template_source);
    if (!has_value(j, "chat_template") || !j["chat_template"].is_string())
      throw FormatError(m.chat_template_source + ": field 'chat_template' must be a string");
    m.chat_template = j["chat_template"].get<std::string>();
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
    ids.push_back(impl_->ensure_special(t, "add_special_tokens"));
  }
  return ids;
}

std::vector<int> LlmTokenizer::encode(const std::string& input, bool add_special_tokens) const {
  const auto& m = *impl_;
  // Non-legacy: one '▁' before the whole text (its own '▁' are spaces first), none per segment.
  const std::string text = !m.legacy && !input.empty() ? kSpaceMarker + replace_all(input, kSpaceMarker, " ") : input;

  // Split on added tokens, leftmost-longest. Text between them is kept verbatim, except the
  // whitespace a token with lstrip / rstrip swallows.
  struct Segment {
    size_t begin, end;            // text bytes, when token is null
    const AddedToken* token;
  };
  std::vector<Segment> segments;
  size_t text_begin = 0, pos = 0;
  while (pos < text.size()) {
    const AddedToken* token = m.match_at(text, pos);
    if (!token) {
      ++pos;
      continue;
    }
    const size_t text_end = token->lstrip ? whitespace_run_start(text, text_begin, pos) : pos;
    if (text_end > text_begin) segments.push_back({text_begin, text_end, nullptr});
    segments.push_back({0, 0, token});
    pos += token->content.size();
    if (token->rstrip) pos = whitespace_run_end(text, pos);
    text_begin = pos;
  }
  if (text.size() > text_begin) segments.push_back({text_begin, text.size(), nullptr});
  // Non-legacy: a '▁' standing alone before a special token is dropped (transformers does so).
  if (!m.legacy && segments.size() > 1 && !segments[0].token && segments[1].token && segments[1].token->special &&
      text.compare(segments[0].begin, segments[0].end - segments[0].begin, kSpaceMarker) == 0)
    segments.erase(segments.begin());

  std::vector<int> ids;
  if (add_special_tokens && m.add_bos && m.bos >= 0) ids.push_back(m.bos);
  for (const auto& s : segments) {
    if (s.token) ids.push_back(s.token->id);
    else m.encode_segment(text.substr(s.begin, s.end - s.begin), ids);
  }
  if (add_special_tokens && m.add_eos && m.eos >= 0) ids.push_back(m.eos);
  return ids;
}

std::string LlmTokenizer::decode(const std::vector<int>& ids, bool skip_special_tokens) const {
  const auto& m = *impl_;
  // tokenizers' decoder chain Replace('▁', ' '), ByteFallback, Fuse, Strip(' ', 1, 0).
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
    const std::string token = m.token_of(id);
    if (m.index_of.count(id)) {  // added tokens come out as their text
      flush_bytes();
      out += token;
      continue;
    }
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
  if (!m.chat_template.empty() && !is_mistral_instruct_template(m.chat_template))
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
