// Answers a question from documents with a CLaRa checkpoint, streaming the answer as it comes.
//   ask_clara CHECKPOINT_DIR BASE_DIR QUESTION DOCUMENT [DOCUMENT ...]
#include <hrmclara/clara_pipeline.h>

#include <exception>
#include <iostream>

int main(int argc, char** argv) {
  if (argc < 5) {
    std::cerr << "usage: ask_clara CHECKPOINT_DIR BASE_DIR QUESTION DOCUMENT [DOCUMENT ...]\n";
    return 2;
  }
  try {
    const auto clara = hrmclara::ClaraPipeline::load(argv[1], argv[2]);
    hrmclara::ClaraQuestion question;
    question.question = argv[3];
    question.documents.assign(argv + 4, argv + argc);
    hrmclara::ClaraGeneration generation;
    generation.max_new_tokens = 32;
    const auto reply = clara.answer(question, generation, [](const std::string& piece) {
      std::cout << piece << std::flush;  // each piece as soon as it is generated
      return true;
    });
    std::cout << "\n(" << reply.generated_tokens << " tokens, " << clara.info().memory_tokens
              << " memory vectors per document)\n";
    return 0;
  } catch (const std::exception& e) {
    std::cerr << "ask_clara: " << e.what() << "\n";
    return 1;
  }
}
