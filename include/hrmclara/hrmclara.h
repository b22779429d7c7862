// hrmclara's public API in one include. Each header is usable on its own as well.
#pragma once

#include <hrmclara/checkpoint.h>
#include <hrmclara/config.h>
#include <hrmclara/device.h>
#include <hrmclara/errors.h>
#include <hrmclara/files.h>
#include <hrmclara/log.h>
#include <hrmclara/tensor_io.h>
#include <hrmclara/tokenizer.h>
