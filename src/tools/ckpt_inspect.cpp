// ckpt_inspect PATH [--to-safetensors OUT]
// Lists every tensor of a checkpoint, sorted by name, one per line: name<TAB>dtype<TAB>[d0,d1,...]
#include <hrmclara/checkpoint.h>
#include <hrmclara/cli.h>
#include <hrmclara/errors.h>

#include <algorithm>
#include <iostream>

int main(int argc, char** argv) {
  return hrmclara::run_main("ckpt_inspect", [&] {
    hrmclara::ArgParser args("ckpt_inspect",
                             "PATH [--to-safetensors OUT]\n\n"
                             "PATH: a torch.save file, a .safetensors file, a *.safetensors.index.json, a directory\n"
                             "holding model.safetensors or its index, or an hrmclara checkpoint.");
    args.option("to-safetensors", "also write every tensor to this .safetensors file")
        .option("log-level", "trace|debug|info|warn|error|off", "warn");
    if (!args.parse(argc, argv, 1)) return 0;
    if (args.positionals().empty()) throw hrmclara::UsageError("missing PATH (see --help)");
    auto tensors = hrmclara::load_tensors(args.positionals()[0]);
    std::sort(tensors.begin(), tensors.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
    std::string out;
    for (const auto& [name, t] : tensors)
      out += name + "\t" + hrmclara::dtype_name(t.scalar_type()) + "\t" + hrmclara::shape_text(t.sizes()) + "\n";
    std::cout << out << std::flush;
    if (args.has("to-safetensors")) hrmclara::write_safetensors(args.get("to-safetensors"), tensors);
    return 0;
  });
}
