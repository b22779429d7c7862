// The LLM tokenizer: SentencePiece plus Hugging Face added tokens and the chat template. See
// llm_tokenizer.h for the semantics reproduced (transformers 4.56 / tokenizers 0.22 with a legacy
// Mistral tokenizer.json).
#include <hrmclara/errors.h>
#include <hrmclara/files.h>
#include <hrmclara/llm_tokenizer.h>
#include <hrmclara/tokenizer.h>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <map>
#include <set>

namespace hrmclara {

namespace {

using Json = nlohmann::json;

const std::string kSpaceMarker = "\xE2\x96\x81";  // '▁', SentencePiece's space

Json read_json(const std::string& path) {
  try {
    return Json::parse(read_file(path));
  } catch (const Json::parse_error& e) {
    throw FormatError(path + ": not valid JSON (" + std::string(e.what()).substr(0, 120) + ")");
  }
}

// A special-token field: "<s>", {"content": "<s>", ...} or null.
std::string token_field(const Json& j, const std::string& key, const std::string& path) {
  if (!j.contains(key) || j[key].is_null()) return "";
  const Json& v = j[key];
  if (v.is_string()) return v.get<std::string>();
  if (v.is_object() && v.contains("content") && v["content"].is_string()) return v["content"].get<std::string>();
  throw FormatError(path + ": field '" + key + "' must be a string or an object with 'content'");
}

bool bool_field(const Json& j, const std::string& key, bool fallback, const std::string& path) {
  if (!j.contains(key) || j[key].is_null()) return fallback;
  if (!j[key].is_boolean()) throw FormatError(path + ": field '" + key + "' must be true or false");
  return j[key].get<bool>();
}

bool is_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'; }

// "<0xNN>" -> NN, or -1.
int byte_piece_value(const std::string& token) {
  if (token.size() != 6 || token.compare(0, 3, "<0x") != 0 || token[5] != '>') return -1;
  int value = 0;
  for (int i = 3; i < 5; ++i) {
    const char c = token[i];
    const int digit = c >= '0' && c <= '9' ? c - '0' : c >= 'A' && c <= 'F' ? c - 'A' + 10 : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
    if (digit < 0) return -1;
    value = value * 16 + digit;
  }
  return value;
}

// Strict UTF-8 validation (no overlongs, no surrogates, nothing above U+10FFFF), as Rust's
// String::from_utf8 checks it.
bool valid_utf8(const std::string& s) {
  size_t i = 0;
  while (i < s.size()) {
    const auto c = static_cast<unsigned char>(s[i]);
    int extra = 0;
    unsigned min = 0, code = 0;
    if (c < 0x80) { ++i; continue; }
    if ((c & 0xE0) == 0xC0) extra = 1, min = 0x80, code = c & 0x1F;
    else if ((c & 0xF0) == 0xE0) extra = 2, min = 0x800, code = c & 0x0F;
    else if ((c & 0xF8) == 0xF0) extra = 3, min = 0x10000, code = c & 0x07;
    else return false;
    if (i + extra >= s.size()) return false;  // truncated sequence
    for (int k = 1; k <= extra; ++k) {
      const auto d = static_cast<unsigned char>(s[i + k]);
      if ((d & 0xC0) != 0x80) return false;
      code = (code << 6) | (d & 0x3F);
    }
    if (code < min || code > 0x10FFFF || (code >= 0xD800 && code <= 0xDFFF)) return false;
    i += extra + 1;
  }
  return true;
}

std::string replace_all(std::string s, const std::string& from, const std::string& to) {
  for (size_t pos = s.find(from); pos != std::string::npos; pos = s.find(from, pos + to.size())) s.replace(pos, from.size(), to);
  return s;
}

}  // namespace

struct LlmTokenizer::Impl {
  std::string dir;
  std::unique_ptr<SentencePiece> spm;
  std::vector<AddedToken> added;      // matched in text, in the order they were added
  std::map<std::string, int> added_ids;
  std::map<int, size_t> added_by_id;  // id -> index in `added`
  int vocab = 0;
  int bos = -1, eos = -1, unk = -1, pad = -1;
  bool add_bos = true, add_eos = false, legacy = true;
  std::string chat_template;  // empty: the default Mistral-instruct one
  std::string config_path;

  void add(const AddedToken& token) {
    if (token.content.empty()) throw FormatError(dir + ": an added token has empty content");
    const auto it = added_ids.find(token.content);
    if (it != added_ids.end()) {
      added[added_by_id[it->second]] = token;
      added[added_by_id[it->second]].id = it->second;
      return;
    }
    added_ids[token.content] = token.id;
    added_by_id[token.id] = added.size();
    added.push_back(token);
    vocab = std::max(vocab, token.id + 1);
  }

  int find(const std::string& token) const {
    const auto it = added_ids.find(token);
    if (it != added_ids.end()) return it->second;
    const int id = spm->piece_to_id(token);
    if (id == spm->unk_id() && token != spm->id_to_piece(id)) return -1;
    return id;
  }

  std::string token_of(int id) const {
    const auto it = added_by_id.find(id);
    if (it != added_by_id.end()) return added[it->second].content;
    if (id < 0 || id >= spm->vocab_size())
      throw UsageError("token id " + std::to_string(id) + " is outside the vocabulary [0, " + std::to_string(vocab) + ")");
    return spm->id_to_piece(id);
  }

  bool special(int id) const {
    if (id == bos || id == eos || id == unk || id == pad) return id >= 0;
    const auto it = added_by_id.find(id);
    return it != added_by_id.end() && added[it->second].special;
  }

  // SentencePiece on one text segment. Legacy: with its own dummy prefix. Non-legacy: none (the
  // prefix was put before the whole text), by encoding unk + text and dropping unk's pieces.
  void encode_segment(const std::string& text, std::vector<int>& out) const {
    if (legacy) {
      const auto ids = spm->encode(text);
      out.insert(out.end(), ids.begin(), ids.end());
      return;
    }
    const std::string unk_piece = spm->id_to_piece(spm->unk_id());
    const size_t skip = spm->encode(unk_piece).size();
    const auto ids = spm->encode(unk_piece + text);
    out.insert(out.end(), ids.begin() + static_cast<long>(std::min(skip, ids.size())), ids.end());
  }
};

LlmTokenizer::LlmTokenizer(const std::string& dir) : impl_(std::make_unique<Impl>()) {
  auto& m = *impl_;
  m.dir = dir;
  const std::string model_path = dir + "/tokenizer.model";
  if (!file_exists(model_path)) throw IoError(model_path + ": missing (the tokenizer needs a SentencePiece model)");
  m.spm = std::make_unique<SentencePiece>(model_path);
  m.vocab = m.spm->vocab_size();
  m.unk = m.spm->unk_id();
  m.bos = m.spm->bos_id();
  m.eos = m.spm->eos_id();
  m.pad = m.spm->pad_id();
  // The base tokenizer's own specials are matched in text, as Mistral's tokenizer.json declares.
  for (int id : {m.unk, m.bos, m.eos})
    if (id >= 0 && id < m.vocab) m.add({m.spm->id_to_piece(id), id, true, false, false});

  m.config_path = dir + "/tokenizer_config.json";
  Json config = Json::object();
  if (file_exists(m.config_path)) {
    config = read_json(m.config_path);
    if (!config.is_object()) throw FormatError(m.config_path + ": expected a JSON object");
    if (config.contains("added_tokens_decoder") && !config["added_tokens_decoder"].is_null()) {
      const Json& decoder = config["added_tokens_decoder"];
      if (!decoder.is_object()) throw FormatError(m.config_path + ": field 'added_tokens_decoder' must be an object");
      std::vector<AddedToken> tokens;
      for (const auto& [key, entry] : decoder.items()) {
        AddedToken t;
        try {
          t.id = std::stoi(key);
        } catch (const std::exception&) {
          throw FormatError(m.config_path + ": added_tokens_decoder key '" + key + "' is not an id");
        }
        if (!entry.is_object() || !entry.contains("content") || !entry["content"].is_string())
          throw FormatError(m.config_path + ": added_tokens_decoder['" + key + "'] needs a string 'content'");
        t.content = entry["content"].get<std::string>();
        t.special = bool_field(entry, "special", true, m.config_path);
        t.lstrip = bool_field(entry, "lstrip", false, m.config_path);
        t.rstrip = bool_field(entry, "rstrip", false, m.config_path);
        tokens.push_back(t);
      }
      std::sort(tokens.begin(), tokens.end(), [](const AddedToken& a, const AddedToken& b) { return a.id < b.id; });
      for (const auto& t : tokens) m.add(t);
    }
    m.add_bos = bool_field(config, "add_bos_token", true, m.config_path);
    m.add_eos = bool_field(config, "add_eos_token", false, m.config_path);
    m.legacy = bool_field(config, "legacy", true, m.config_path);
    if (config.contains("chat_template") && !config["chat_template"].is_null()) {
      if (!config["chat_template"].is_string())
        throw FormatError(m.config_path + ": field 'chat_template' must be a string (named templates are not supported)");
      m.chat_template = config["chat_template"].get<std::string>();
    }
  }

  const std::string added_path = dir + "/added_tokens.json";
  if (file_exists(added_path)) {
    const Json j = read_json(added_path);
    if (!j.is_object()) throw FormatError(added_path + ": expected an object of token -> id");
    std::vector<AddedToken> tokens;
    for (const auto& [content, id] : j.items()) {
      if (!id.is_number_integer()) throw FormatError(added_path + ": id of '" + content + "' is not an integer");
      tokens.push_back({content, id.get<int>(), true, false, false});
    }
    std::sort(tokens.begin(), tokens.end(), [](const AddedToken& a, const AddedToken& b) { return a.id < b.id; });
    for (const auto& t : tokens) m.add(t);
  }

  const std::string map_path = dir + "/special_tokens_map.json";
  Json special_map = Json::object();
  if (file_exists(map_path)) {
    special_map = read_json(map_path);
    if (!special_map.is_object()) throw FormatError(map_path + ": expected a JSON object");
    if (special_map.contains("additional_special_tokens") && !special_map["additional_special_tokens"].is_null()) {
      const Json& extra = special_map["additional_special_tokens"];
      if (!extra.is_array()) throw FormatError(map_path + ": field 'additional_special_tokens' must be a list");
      std::vector<std::string> tokens;
      for (const auto& t : extra) {
        if (t.is_string()) tokens.push_back(t.get<std::string>());
        else if (t.is_object() && t.contains("content") && t["content"].is_string()) tokens.push_back(t["content"].get<std::string>());
        else throw FormatError(map_path + ": additional_special_tokens entries must be strings");
      }
      add_special_tokens(tokens);
    }
  }

  // Named special tokens: tokenizer_config.json wins over special_tokens_map.json.
  struct Named {
    const char* key;
    int* id;
  };
  for (const Named& n : {Named{"bos_token", &m.bos}, Named{"eos_token", &m.eos}, Named{"unk_token", &m.unk},
                         Named{"pad_token", &m.pad}}) {
    std::string content = token_field(config, n.key, m.config_path);
    std::string from = m.config_path;
    if (content.empty()) content = token_field(special_map, n.key, map_path), from = map_path;
    if (content.empty()) continue;
    const int id = m.find(content);
    if (id < 0) throw FormatError(from + ": " + n.key + " '" + content + "' is not in the vocabulary");
    *n.id = id;
  }
}

LlmTokenizer::~LlmTokenizer() = default;
LlmTokenizer::LlmTokenizer(LlmTokenizer&&) noexcept = default;
LlmTokenizer& LlmTokenizer::operator=(LlmTokenizer&&) noexcept = default;

std::vector<int> LlmTokenizer::add_special_tokens(const std::vector<std::string>& tokens) {
  auto& m = *impl_;
  std::vector<int> ids;
  for (const auto& t : tokens) {
    if (t.empty()) throw UsageError("a special token must not be empty");
    int id = m.find(t);
    if (id < 0) id = m.vocab;
    if (!m.added_ids.count(t)) m.add({t, id, true, false, false});
    ids.push_back(id);
  }
  return ids;
}

std::vector<int> LlmTokenizer::encode(const std::string& input, bool add_special_tokens) const {
  const auto& m = *impl_;
  std::string text = input;
  if (!m.legacy && !text.empty()) text = kSpaceMarker + replace_all(text, kSpaceMarker, " ");

  // Split on added tokens, leftmost-longest; text between them is kept verbatim unless a token
  // strips the whitespace next to it.
  struct Segment {
    bool special;
    std::string text;
    int id;
  };
  std::vector<Segment> segments;
  std::string pending;
  size_t i = 0;
  while (i < text.size()) {
    const AddedToken* best = nullptr;
    for (const auto& t : m.added)
      if (text.compare(i, t.content.size(), t.content) == 0 && (!best || t.content.size() > best->content.size())) best = &t;
    if (!best) {
      pending += text[i++];
      continue;
    }
    if (best->lstrip)
      while (!pending.empty() && is_space(pending.back())) pending.pop_back();
    if (!pending.empty()) segments.push_back({false, pending, -1});
    pending.clear();
    segments.push_back({true, best->content, best->id});
    i += best->content.size();
    if (best->rstrip)
      while (i < text.size() && is_space(text[i])) ++i;
  }
  if (!pending.empty()) segments.push_back({false, pending, -1});
  // Non-legacy: a lone prefix marker in front of a special token is dropped.
  if (!m.legacy && segments.size() > 1 && !segments[0].special && segments[0].text == kSpaceMarker && segments[1].special)
    segments.erase(segments.begin());

  std::vector<int> ids;
  if (add_special_tokens && m.add_bos && m.bos >= 0) ids.push_back(m.bos);
  for (const auto& s : segments) {
    if (s.special) ids.push_back(s.id);
    else m.encode_segment(s.text, ids);
  }
  if (add_special_tokens && m.add_eos && m.eos >= 0) ids.push_back(m.eos);
  return ids;
}

std::string LlmTokenizer::decode(const std::vector<int>& ids, bool skip_special_tokens) const {
  const auto& m = *impl_;
  // tokenizers' decoder chain: Replace('▁', ' '), ByteFallback, Fuse, Strip(' ', 1, 0).
  std::string out, bytes;
  size_t byte_count = 0;
  auto flush_bytes = [&] {
    if (byte_count == 0) return;
    if (valid_utf8(bytes)) {
      out += bytes;
    } else {
      for (size_t k = 0; k < byte_count; ++k) out += "\xEF\xBF\xBD";  // U+FFFD per byte
    }
    bytes.clear();
    byte_count = 0;
  };
  for (int id : ids) {
    if (skip_special_tokens && m.special(id)) continue;
    const std::string token = m.token_of(id);
    const bool is_added = m.added_by_id.count(id) > 0;
    const int byte = is_added ? -1 : byte_piece_value(token);
    if (byte >= 0) {
      bytes += static_cast<char>(byte);
      ++byte_count;
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
  if (id < 0 || id >= impl_->vocab) throw UsageError("pad id " + std::to_string(id) + " is outside the vocabulary");
  impl_->pad = id;
}
const std::vector<AddedToken>& LlmTokenizer::added_tokens() const { return impl_->added; }

std::string LlmTokenizer::apply_chat_template(const std::vector<ChatMessage>& messages, bool /*add_generation_prompt*/) const {
  const auto& m = *impl_;
  if (!m.chat_template.empty() && m.chat_template.find("[INST]") == std::string::npos)
    throw FormatError(m.config_path + ": field 'chat_template' is not the Mistral-instruct template, the only one supported");
  size_t first = 0;
  std::string system;
  const bool has_system = !messages.empty() && messages[0].role == "system";
  if (has_system) system = messages[0].content, first = 1;
  std::string out = m.bos >= 0 ? m.token_of(m.bos) : "";
  const std::string eos = m.eos >= 0 ? m.token_of(m.eos) : "";
  for (size_t i = first; i < messages.size(); ++i) {
    const auto& msg = messages[i];
    const bool expect_user = (i - first) % 2 == 0;
    if (msg.role != "user" && msg.role != "assistant")
      throw UsageError("chat message " + std::to_string(i) + ": role '" + msg.role +
                       "'; only user and assistant follow an optional first system message");
    if ((msg.role == "user") != expect_user)
      throw UsageError("chat message " + std::to_string(i) + ": roles must alternate user/assistant after the optional system message");
    if (msg.role == "user") {
      out += " [INST] ";
      if (i == first && has_system) out += system + "\n\n";
      out += msg.content + " [/INST]";
    } else {
      out += " " + msg.content + eos;
    }
  }
  return out;
}

}  // namespace hrmclara
