// hrmclara_info: what this build runs on (version, LibTorch, BLAS, CPU capability, native bf16/f16,
// threads, CUDA/MPS, the device and dtype `auto` picks). First thing to run when something is
// slow or fails on one machine and not another.
#include <hrmclara/cli.h>
#include <hrmclara/device.h>
#include <hrmclara/info.h>

#include <iostream>

using namespace hrmclara;

int main(int argc, char** argv) {
  return run_main("hrmclara_info", [&] {
    ArgParser args("hrmclara_info", "[--json] [--measure] [--threads T]");
    args.flag("json", "one JSON object instead of aligned lines")
        .flag("measure", "also time a 256^3 matmul in float32, bfloat16 and float16 on the CPU")
        .option("threads", "CPU threads (0: all cores)", "0");
    if (!args.parse(argc, argv, 0)) return 0;
    configure_threads(static_cast<int>(args.get_int("threads")));
    const Json info = system_info(args.has("measure"));
    if (args.has("json")) std::cout << info.dump() << std::endl;
    else std::cout << system_info_text(info);
    return 0;
  });
}
