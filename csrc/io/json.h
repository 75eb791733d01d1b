// A small strict JSON reader for checkpoint headers (safetensors, sharded index files).
// Hostile input is the normal case here, so it bounds nesting depth and rejects anything
// outside RFC 8259 instead of guessing.
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace wan::io {

struct JsonValue {
  enum class Kind { Null, Bool, Number, String, Array, Object };
  Kind kind = Kind::Null;
  bool boolean = false;
  double number = 0;
  // Integers that fit in 64 bits are kept exactly: offsets past 2^53 must not be rounded.
  std::optional<uint64_t> unsigned_integer;
  bool negative_integer = false;
  std::string string;
  std::vector<JsonValue> array;
  std::vector<std::pair<std::string, JsonValue>> object;  // in file order; duplicates rejected

  const JsonValue* find(std::string_view key) const;
};

// Parses exactly one JSON value filling the whole text (surrounding whitespace allowed).
// On failure returns nullopt and sets `error` to a message with the byte position.
std::optional<JsonValue> parse_json(std::string_view text, std::string& error);

}  // namespace wan::io
