// The plain C interface of libhrmclara_spm, the plugin that links SentencePiece. Only C types
// cross it, so the plugin's C++ and protobuf symbols never meet LibTorch's (see tokenizer.h).
// Strings and arrays returned by the plugin are freed with hc_spm_free.
#pragma once

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

#define HC_SPM_ABI_VERSION 1

typedef struct hc_spm hc_spm;

int hc_spm_abi_version(void);
// Returns NULL and sets *error (free with hc_spm_free) on failure.
hc_spm* hc_spm_load(const char* model_path, char** error);
void hc_spm_destroy(hc_spm* handle);
void hc_spm_free(void* p);

// Returns 0 on success; *ids / *pieces_blob are allocated by the plugin.
int hc_spm_encode(const hc_spm* handle, const char* text, size_t text_len, int** ids, size_t* count, char** error);
// Pieces are returned as one blob of NUL-terminated strings, `count` of them.
int hc_spm_encode_pieces(const hc_spm* handle, const char* text, size_t text_len, char** pieces_blob,
                         size_t* blob_len, size_t* count, char** error);
int hc_spm_decode(const hc_spm* handle, const int* ids, size_t count, char** text, size_t* text_len, char** error);

int hc_spm_vocab_size(const hc_spm* handle);
int hc_spm_piece_to_id(const hc_spm* handle, const char* piece, size_t piece_len);
// Returns a plugin-owned string valid until the handle is destroyed, or NULL when out of range.
const char* hc_spm_id_to_piece(const hc_spm* handle, int id);
// which: 0 unk, 1 bos, 2 eos, 3 pad
int hc_spm_special_id(const hc_spm* handle, int which);

#ifdef __cplusplus
}
#endif
