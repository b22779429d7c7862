// SentencePiece in the same process as LibTorch. Debian's libsentencepiece bundles its own
// protobuf, which clashes with the one LibTorch loads, so SentencePiece lives in a small plugin
// (libhrmclara_spm.so) that is opened with dlopen(RTLD_NOW | RTLD_LOCAL | RTLD_DEEPBIND) and
// spoken to through a plain C API. This header needs neither torch nor sentencepiece.
#pragma once

#include <memory>
#include <string>
#include <vector>

namespace hrmclara {

class SentencePiece {
 public:
  // Loads a SentencePiece .model file. Throws IoError / FormatError naming the file, or Error if
  // the plugin cannot be found (it is looked for in $HRMCLARA_SPM_PLUGIN, beside the running
  // executable, beside libhrmclara, and in the build tree).
  explicit SentencePiece(const std::string& model_path);
  ~SentencePiece();
  SentencePiece(const SentencePiece&) = delete;
  SentencePiece& operator=(const SentencePiece&) = delete;

  // Plain SentencePiece encoding: no BOS/EOS added.
  std::vector<int> encode(const std::string& text) const;
  std::vector<std::string> encode_pieces(const std::string& text) const;
  std::string decode(const std::vector<int>& ids) const;

  int vocab_size() const;
  int piece_to_id(const std::string& piece) const;  // unk_id() for unknown pieces
  std::string id_to_piece(int id) const;            // throws UsageError for ids out of range
  int unk_id() const;
  int bos_id() const;
  int eos_id() const;
  int pad_id() const;

  // The plugin file in use (for diagnostics).
  static std::string plugin_path();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace hrmclara
