// libhrmclara_spm: SentencePiece behind a C API. Built as a MODULE and loaded with dlopen by
// src/core/tokenizer.cpp; nothing else links it.
#include "spm_plugin_api.h"

#include <sentencepiece_processor.h>

#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

struct hc_spm {
  sentencepiece::SentencePieceProcessor processor;
  std::vector<std::string> pieces;  // id -> piece, so id_to_piece can hand out stable pointers
};

namespace {

char* dup_string(const std::string& s) {
  char* out = static_cast<char*>(std::malloc(s.size() + 1));
  if (out) {
    std::memcpy(out, s.data(), s.size());
    out[s.size()] = '\0';
  }
  return out;
}

int fail(char** error, const std::string& message) {
  if (error) *error = dup_string(message);
  return 1;
}

}  // namespace

extern "C" {

int hc_spm_abi_version(void) { return HC_SPM_ABI_VERSION; }

hc_spm* hc_spm_load(const char* model_path, char** error) {
  auto* handle = new (std::nothrow) hc_spm();
  if (!handle) {
    fail(error, "out of memory");
    return nullptr;
  }
  const auto status = handle->processor.Load(model_path);
  if (!status.ok()) {
    fail(error, status.ToString());
    delete handle;
    return nullptr;
  }
  const int n = handle->processor.GetPieceSize();
  handle->pieces.reserve(static_cast<size_t>(n));
  for (int i = 0; i < n; ++i) handle->pieces.push_back(handle->processor.IdToPiece(i));
  return handle;
}

void hc_spm_destroy(hc_spm* handle) { delete handle; }

void hc_spm_free(void* p) { std::free(p); }

int hc_spm_encode(const hc_spm* handle, const char* text, size_t text_len, int** ids, size_t* count, char** error) {
  std::vector<int> out;
  const auto status = handle->processor.Encode(std::string(text, text_len), &out);
  if (!status.ok()) return fail(error, status.ToString());
  *count = out.size();
  *ids = static_cast<int*>(std::malloc(sizeof(int) * (out.empty() ? 1 : out.size())));
  if (!*ids) return fail(error, "out of memory");
  if (!out.empty()) std::memcpy(*ids, out.data(), sizeof(int) * out.size());
  return 0;
}

int hc_spm_encode_pieces(const hc_spm* handle, const char* text, size_t text_len, char** pieces_blob,
                         size_t* blob_len, size_t* count, char** error) {
  std::vector<std::string> out;
  const auto status = handle->processor.Encode(std::string(text, text_len), &out);
  if (!status.ok()) return fail(error, status.ToString());
  std::string blob;
  for (const auto& piece : out) {
    blob += piece;
    blob.push_back('\0');
  }
  *count = out.size();
  *blob_len = blob.size();
  *pieces_blob = static_cast<char*>(std::malloc(blob.empty() ? 1 : blob.size()));
  if (!*pieces_blob) return fail(error, "out of memory");
  if (!blob.empty()) std::memcpy(*pieces_blob, blob.data(), blob.size());
  return 0;
}

int hc_spm_decode(const hc_spm* handle, const int* ids, size_t count, char** text, size_t* text_len, char** error) {
  std::string out;
  const auto status = handle->processor.Decode(std::vector<int>(ids, ids + count), &out);
  if (!status.ok()) return fail(error, status.ToString());
  *text_len = out.size();
  *text = dup_string(out);
  if (!*text) return fail(error, "out of memory");
  return 0;
}

int hc_spm_vocab_size(const hc_spm* handle) { return handle->processor.GetPieceSize(); }

int hc_spm_piece_to_id(const hc_spm* handle, const char* piece, size_t piece_len) {
  return handle->processor.PieceToId(std::string(piece, piece_len));
}

const char* hc_spm_id_to_piece(const hc_spm* handle, int id) {
  if (id < 0 || static_cast<size_t>(id) >= handle->pieces.size()) return nullptr;
  return handle->pieces[static_cast<size_t>(id)].c_str();
}

int hc_spm_special_id(const hc_spm* handle, int which) {
  switch (which) {
    case 0: return handle->processor.unk_id();
    case 1: return handle->processor.bos_id();
    case 2: return handle->processor.eos_id();
    case 3: return handle->processor.pad_id();
    default: return -1;
  }
}

}  // extern "C"
