#include <hrmclara/config.h>
#include <hrmclara/errors.h>
#include <hrmclara/files.h>

#include <yaml-cpp/yaml.h>

#include <cmath>
#include <limits>
#include <regex>

namespace hrmclara {

Json read_json_file(const std::string& path) {
  const std::string text = read_file(path, kMaxConfigFileBytes);
  try {
    return Json::parse(text);
  } catch (const Json::exception& e) {
    // nlohmann reports "[json.exception.parse_error.101] parse error at line 3, column 5: ...".
    std::string what = e.what();
    auto at = what.find("parse error");
    throw FormatError(path + ": malformed JSON: " + (at == std::string::npos ? what : what.substr(at)));
  }
}

void write_json_file(const std::string& path, const Json& value) {
  write_file_atomically(path, value.dump(2) + "\n");
}

namespace {

Json yaml_scalar(const YAML::Node& node) {
  const std::string& s = node.Scalar();
  if (node.Tag() == "!") return s;  // quoted in the file: always a string
  static const std::regex int_re(R"([-+]?[0-9]+)");
  static const std::regex float_re(R"([-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?)");
  if (s == "~" || s == "null" || s == "Null" || s == "NULL" || s.empty()) return nullptr;
  if (s == "true" || s == "True" || s == "TRUE") return true;
  if (s == "false" || s == "False" || s == "FALSE") return false;
  if (std::regex_match(s, int_re)) {
    try {
      return std::stoll(s);
    } catch (const std::out_of_range&) {
    }
  }
  if (std::regex_match(s, float_re)) {
    try {
      return std::stod(s);
    } catch (const std::out_of_range&) {  // 1e999: PyYAML gives inf (and 1e-999: 0.0)
      const bool tiny = s.find_first_of("eE") != std::string::npos && s[s.find_first_of("eE") + 1] == '-';
      if (tiny) return 0.0;
      return s[0] == '-' ? -std::numeric_limits<double>::infinity() : std::numeric_limits<double>::infinity();
    }
  }
  if (s == ".inf" || s == ".Inf") return std::numeric_limits<double>::infinity();
  if (s == "-.inf" || s == "-.Inf") return -std::numeric_limits<double>::infinity();
  return s;
}

// yaml-cpp keeps an alias as a second reference to its anchor's node, so nine levels of
// `&a [*a, *a, ...]` parse into a few hundred nodes but expand into billions: the conversion counts
// the nodes it writes and stops at a bound no configuration comes near.
constexpr size_t kMaxYamlNodes = 1'000'000;
constexpr int kMaxYamlDepth = 100;

struct YamlBudget {
  const std::string& path;
  size_t nodes_left = kMaxYamlNodes;
};

Json yaml_to_json(const YAML::Node& node, YamlBudget& budget, int depth) {
  if (budget.nodes_left-- == 0)
    throw FormatError(budget.path + ": YAML expands to more than " + std::to_string(kMaxYamlNodes) +
                      " values (aliases repeated without bound?)");
  if (depth > kMaxYamlDepth)
    throw FormatError(budget.path + ": YAML nested more than " + std::to_string(kMaxYamlDepth) + " levels deep");
  switch (node.Type()) {
    case YAML::NodeType::Map: {
      Json out = Json::object();
      for (const auto& kv : node) out[kv.first.as<std::string>()] = yaml_to_json(kv.second, budget, depth + 1);
      return out;
    }
    case YAML::NodeType::Sequence: {
      Json out = Json::array();
      for (const auto& item : node) out.push_back(yaml_to_json(item, budget, depth + 1));
      return out;
    }
    case YAML::NodeType::Scalar:
      return yaml_scalar(node);
    default:
      return nullptr;
  }
}

std::string type_name(const Json& v) {
  if (v.is_number_integer()) return "integer";
  if (v.is_number_float()) return "number";
  return v.type_name();
}

// Whether a user value may replace a schema value.
bool compatible(const Json& schema, const Json& value) {
  if (schema.is_null() || value.is_null()) return true;  // null in the schema: any type (optional)
  if (schema.is_number_float()) return value.is_number();
  if (schema.is_number_integer()) return value.is_number_integer();
  if (schema.is_boolean()) return value.is_boolean();
  if (schema.is_string()) return value.is_string();
  if (schema.is_array()) return value.is_array();
  if (schema.is_object()) return value.is_object();
  return false;
}

Json merge_at(const Json& schema, const Json& user, const std::string& prefix, const std::string& where) {
  if (!user.is_object()) throw ConfigError(where + ": expected an object" + (prefix.empty() ? "" : " at '" + prefix + "'"));
  Json out = schema;
  const bool free_form = schema.empty();
  for (const auto& [key, value] : user.items()) {
    const std::string dotted = prefix.empty() ? key : prefix + "." + key;
    if (!schema.contains(key)) {
      if (free_form) {
        out[key] = value;
        continue;
      }
      throw ConfigError(where + ": unknown config key '" + dotted + "'");
    }
    const Json& expected = schema[key];
    if (expected.is_object() && !expected.empty()) {
      out[key] = merge_at(expected, value, dotted, where);
    } else {
      if (!compatible(expected, value))
        throw ConfigError(where + ": config key '" + dotted + "' must be " + type_name(expected) + ", got " +
                          type_name(value));
      out[key] = value;
    }
  }
  return out;
}

}  // namespace

Json read_yaml_file(const std::string& path) {
  const std::string text = read_file(path, kMaxConfigFileBytes);
  try {
    YamlBudget budget{path};
    return yaml_to_json(YAML::Load(text), budget, 0);
  } catch (const YAML::Exception& e) {
    throw FormatError(path + ": malformed YAML: " + e.what());
  }
}

Json merge_config(const Json& schema, const Json& user, const std::string& where) {
  return merge_at(schema, user, "", where);
}

Json apply_overrides(const Json& config, const std::vector<std::string>& overrides) {
  Json out = config;
  for (const auto& item : overrides) {
    // Keys and values become JSON strings, which must be UTF-8 (the run's config.json is written).
    try {
      (void)Json(item).dump();
    } catch (const Json::exception&) {
      throw UsageError("override '" + item.substr(0, item.find('=')) + "': not valid UTF-8");
    }
    const auto eq = item.find('=');
    if (eq == std::string::npos || eq == 0)
      throw UsageError("expected key=value, got '" + item + "'");
    const std::string key = item.substr(0, eq), text = item.substr(eq + 1);
    Json value;
    try {
      value = Json::parse(text);
    } catch (const Json::exception&) {
      value = text;  // a bare word: a string
    }
    // Build {"a":{"b":{"c":value}}} and merge it, so the same validation applies.
    Json nested = value;
    std::string rest = key;
    std::vector<std::string> parts;
    for (size_t start = 0;;) {
      auto dot = rest.find('.', start);
      parts.push_back(rest.substr(start, dot == std::string::npos ? std::string::npos : dot - start));
      if (dot == std::string::npos) break;
      start = dot + 1;
    }
    for (auto it = parts.rbegin(); it != parts.rend(); ++it) {
      if (it->empty()) throw UsageError("bad config key '" + key + "'");
      Json wrap = Json::object();
      wrap[*it] = nested;
      nested = wrap;
    }
    out = merge_config(out, nested, "command line");
  }
  return out;
}

const Json& config_at(const Json& config, const std::string& dotted_key) {
  const Json* node = &config;
  size_t start = 0;
  while (true) {
    auto dot = dotted_key.find('.', start);
    const std::string part = dotted_key.substr(start, dot == std::string::npos ? std::string::npos : dot - start);
    if (!node->is_object() || !node->contains(part)) throw ConfigError("missing config key '" + dotted_key + "'");
    node = &(*node)[part];
    if (dot == std::string::npos) return *node;
    start = dot + 1;
  }
}

}  // namespace hrmclara
