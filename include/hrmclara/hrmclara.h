// hrmclara's public API in one include. Each header is usable on its own as well.
#pragma once

#include <hrmclara/arc_score.h>
#include <hrmclara/checkpoint.h>
#include <hrmclara/config.h>
#include <hrmclara/device.h>
#include <hrmclara/errors.h>
#include <hrmclara/files.h>
#include <hrmclara/hrm.h>
#include <hrmclara/hrm_train.h>
#include <hrmclara/llm.h>
#include <hrmclara/llm_config.h>
#include <hrmclara/llm_tokenizer.h>
#include <hrmclara/log.h>
#include <hrmclara/npy.h>
#include <hrmclara/optim.h>
#include <hrmclara/puzzle_build.h>
#include <hrmclara/puzzle_dataset.h>
#include <hrmclara/report.h>
#include <hrmclara/tensor_io.h>
#include <hrmclara/tokenizer.h>
#include <hrmclara/trainer.h>
