// Solves a Sudoku with a trained HRM/TRM checkpoint through hrmclara's embedding API.
//   solve_sudoku CHECKPOINT [PUZZLE]   (PUZZLE: 81 characters, 1-9 given, 0 or . blank)
#include <hrmclara/hrm_solver.h>

#include <exception>
#include <iostream>

int main(int argc, char** argv) {
  if (argc < 2) {
    std::cerr << "usage: solve_sudoku CHECKPOINT [PUZZLE]\n";
    return 2;
  }
  try {
    const auto solver = hrmclara::HrmSolver::load(argv[1]);
    const auto puzzle = argc > 2 ? hrmclara::sudoku::parse(argv[2]) : hrmclara::sudoku::generate(7, 50);
    const auto answer = solver.solve({puzzle});
    const auto verdict = hrmclara::sudoku::check(puzzle, answer.tokens);
    std::cout << "puzzle   " << hrmclara::sudoku::format(puzzle) << "\n"
              << "solution " << hrmclara::sudoku::format(answer.tokens) << "\n"
              << "steps " << answer.steps << ", confidence " << answer.halt_confidence << ", "
              << (verdict.solved() ? "solved" : "not solved") << "\n";
    return verdict.solved() ? 0 : 1;
  } catch (const std::exception& e) {
    std::cerr << "solve_sudoku: " << e.what() << "\n";
    return 1;
  }
}
