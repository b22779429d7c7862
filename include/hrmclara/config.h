// JSON configuration with `key=value` overrides on dotted keys. A config is validated against
// a schema of defaults: every key the user gives must exist in the schema (unknown keys are
// rejected by name) and keep the schema value's type. Upstream's YAML (all_config.yaml) is read
// into the same JSON representation.
#pragma once

#include <nlohmann/json.hpp>

#include <string>
#include <vector>

namespace hrmclara {

using Json = nlohmann::json;

// Reads a JSON file; throws IoError / FormatError naming the file (and line for parse errors).
Json read_json_file(const std::string& path);

// Writes JSON atomically (temp file + rename), pretty-printed.
void write_json_file(const std::string& path, const Json& value);

// Reads a YAML file (e.g. upstream all_config.yaml) as JSON: maps become objects, sequences
// arrays, scalars ints, floats, bools, null or strings as YAML 1.2 core schema would type them.
Json read_yaml_file(const std::string& path);

// Merges `user` into `schema`: every key of `user` must exist in `schema` (recursively) and be of
// a compatible type (an integer is accepted where a float is expected). `where` names the source
// in error messages ("config.json", "command line"). Keys of objects whose schema is the empty
// object are free-form and accepted as given.
Json merge_config(const Json& schema, const Json& user, const std::string& where);

// Applies "a.b.c=value" overrides. The value is parsed as JSON when it parses (numbers, true,
// false, null, arrays, quoted strings), else taken as a plain string; it must fit the type of
// the existing key.
Json apply_overrides(const Json& config, const std::vector<std::string>& overrides);

// Looks up a dotted key; throws ConfigError naming it when it is absent.
const Json& config_at(const Json& config, const std::string& dotted_key);

}  // namespace hrmclara
