#include "io/json.h"

#include <cmath>
#include <cstdlib>
#include <unordered_set>

namespace wan::io {
namespace {

constexpr int kMaxDepth = 32;

class Parser {
 public:
  Parser(std::string_view text, std::string& error) : text_(text), error_(error) {}

  std::optional<JsonValue> parse_document() {
    JsonValue v;
    skip_space();
    if (!parse_value(v, 0)) return std::nullopt;
    skip_space();
    if (pos_ != text_.size()) return fail("unexpected text after the JSON value");
    return v;
  }

 private:
  std::nullopt_t fail(const std::string& what) {
    if (error_.empty()) error_ = what + " at byte " + std::to_string(pos_);
    return std::nullopt;
  }
  bool failed(const std::string& what) {
    fail(what);
    return false;
  }

  void skip_space() {
    while (pos_ < text_.size() &&
           (text_[pos_] == ' ' || text_[pos_] == '\t' || text_[pos_] == '\n' || text_[pos_] == '\r'))
      ++pos_;
  }

  bool literal(std::string_view word) {
    if (text_.substr(pos_, word.size()) != word) return failed("invalid literal");
    pos_ += word.size();
    return true;
  }

  bool parse_value(JsonValue& out, int depth) {
    if (depth > kMaxDepth) return failed("JSON nested deeper than " + std::to_string(kMaxDepth));
    if (pos_ >= text_.size()) return failed("unexpected end of JSON");
    switch (text_[pos_]) {
      case '{': return parse_object(out, depth);
      case '[': return parse_array(out, depth);
      case '"': out.kind = JsonValue::Kind::String; return parse_string(out.string);
      case 't': out.kind = JsonValue::Kind::Bool; out.boolean = true; return literal("true");
      case 'f': out.kind = JsonValue::Kind::Bool; out.boolean = false; return literal("false");
      case 'n': out.kind = JsonValue::Kind::Null; return literal("null");
      default: return parse_number(out);
    }
  }

  bool parse_object(JsonValue& out, int depth) {
    out.kind = JsonValue::Kind::Object;
    ++pos_;  // '{'
    skip_space();
    if (pos_ < text_.size() && text_[pos_] == '}') { ++pos_; return true; }
    std::unordered_set<std::string> seen;  // a header may hold thousands of keys
    while (true) {
      skip_space();
      if (pos_ >= text_.size() || text_[pos_] != '"') return failed("expected a string key");
      std::string key;
      if (!parse_string(key)) return false;
      if (!seen.insert(key).second) return failed("duplicate key \"" + key + "\"");
      skip_space();
      if (pos_ >= text_.size() || text_[pos_] != ':') return failed("expected ':'");
      ++pos_;
      skip_space();
      JsonValue value;
      if (!parse_value(value, depth + 1)) return false;
      out.object.emplace_back(std::move(key), std::move(value));
      skip_space();
      if (pos_ < text_.size() && text_[pos_] == ',') { ++pos_; continue; }
      if (pos_ < text_.size() && text_[pos_] == '}') { ++pos_; return true; }
      return failed("expected ',' or '}'");
    }
  }

  bool parse_array(JsonValue& out, int depth) {
    out.kind = JsonValue::Kind::Array;
    ++pos_;  // '['
    skip_space();
    if (pos_ < text_.size() && text_[pos_] == ']') { ++pos_; return true; }
    while (true) {
      skip_space();
      JsonValue value;
      if (!parse_value(value, depth + 1)) return false;
      out.array.push_back(std::move(value));
      skip_space();
      if (pos_ < text_.size() && text_[pos_] == ',') { ++pos_; continue; }
      if (pos_ < text_.size() && text_[pos_] == ']') { ++pos_; return true; }
      return failed("expected ',' or ']'");
    }
  }

  static void append_utf8(std::string& s, uint32_t cp) {
    if (cp < 0x80) {
      s += static_cast<char>(cp);
    } else if (cp < 0x800) {
      s += static_cast<char>(0xC0 | (cp >> 6));
      s += static_cast<char>(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
      s += static_cast<char>(0xE0 | (cp >> 12));
      s += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
      s += static_cast<char>(0x80 | (cp & 0x3F));
    } else {
      s += static_cast<char>(0xF0 | (cp >> 18));
      s += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
      s += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
      s += static_cast<char>(0x80 | (cp & 0x3F));
    }
  }

  bool parse_hex4(uint32_t& out) {
    if (text_.size() - pos_ < 4) return failed("truncated \\u escape");
    out = 0;
    for (int i = 0; i < 4; ++i) {
      char c = text_[pos_++];
      out <<= 4;
      if (c >= '0' && c <= '9') out |= c - '0';
      else if (c >= 'a' && c <= 'f') out |= c - 'a' + 10;
      else if (c >= 'A' && c <= 'F') out |= c - 'A' + 10;
      else return failed("invalid \\u escape");
    }
    return true;
  }

  // Validates one UTF-8 sequence starting at pos_ and copies it.
  bool copy_utf8(std::string& out) {
    const auto b0 = static_cast<unsigned char>(text_[pos_]);
    int extra = b0 >= 0xF0 && b0 <= 0xF4 ? 3 : b0 >= 0xE0 ? 2 : b0 >= 0xC2 && b0 < 0xE0 ? 1 : -1;
    if (b0 >= 0xF5 || extra < 0) return failed("invalid UTF-8");
    if (text_.size() - pos_ < static_cast<size_t>(extra) + 1) return failed("truncated UTF-8");
    uint32_t cp = b0 & (0x3F >> extra);
    for (int i = 1; i <= extra; ++i) {
      const auto b = static_cast<unsigned char>(text_[pos_ + i]);
      if ((b & 0xC0) != 0x80) return failed("invalid UTF-8");
      cp = (cp << 6) | (b & 0x3F);
    }
    const uint32_t min_cp[] = {0, 0x80, 0x800, 0x10000};
    if (cp < min_cp[extra] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
      return failed("invalid UTF-8");
    out.append(text_.substr(pos_, extra + 1));
    pos_ += extra + 1;
    return true;
  }

  bool parse_string(std::string& out) {
    ++pos_;  // opening quote
    while (true) {
      if (pos_ >= text_.size()) return failed("unterminated string");
      const char c = text_[pos_];
      if (c == '"') { ++pos_; return true; }
      if (static_cast<unsigned char>(c) < 0x20) return failed("control character in string");
      if (c == '\\') {
        if (++pos_ >= text_.size()) return failed("unterminated string");
        const char e = text_[pos_++];
        switch (e) {
          case '"': out += '"'; break;
          case '\\': out += '\\'; break;
          case '/': out += '/'; break;
          case 'b': out += '\b'; break;
          case 'f': out += '\f'; break;
          case 'n': out += '\n'; break;
          case 'r': out += '\r'; break;
          case 't': out += '\t'; break;
          case 'u': {
            uint32_t cp;
            if (!parse_hex4(cp)) return false;
            if (cp >= 0xD800 && cp <= 0xDBFF) {  // a surrogate pair encodes one code point
              uint32_t low;
              if (text_.substr(pos_, 2) != "\\u") return failed("unpaired surrogate");
              pos_ += 2;
              if (!parse_hex4(low)) return false;
              if (low < 0xDC00 || low > 0xDFFF) return failed("unpaired surrogate");
              cp = 0x10000 + ((cp - 0xD800) << 10) + (low - 0xDC00);
            } else if (cp >= 0xDC00 && cp <= 0xDFFF) {
              return failed("unpaired surrogate");
            }
            append_utf8(out, cp);
            break;
          }
          default: return failed("invalid escape");
        }
      } else if (static_cast<unsigned char>(c) < 0x80) {
        out += c;
        ++pos_;
      } else if (!copy_utf8(out)) {
        return false;
      }
    }
  }

  bool parse_number(JsonValue& out) {
    out.kind = JsonValue::Kind::Number;
    const size_t start = pos_;
    bool negative = false;
    if (pos_ < text_.size() && text_[pos_] == '-') { negative = true; ++pos_; }
    const size_t digits_start = pos_;
    while (pos_ < text_.size() && text_[pos_] >= '0' && text_[pos_] <= '9') ++pos_;
    const size_t int_digits = pos_ - digits_start;
    if (int_digits == 0) return failed("invalid value");
    if (int_digits > 1 && text_[digits_start] == '0') return failed("leading zero in number");
    bool integral = true;
    if (pos_ < text_.size() && text_[pos_] == '.') {
      integral = false;
      ++pos_;
      const size_t f = pos_;
      while (pos_ < text_.size() && text_[pos_] >= '0' && text_[pos_] <= '9') ++pos_;
      if (pos_ == f) return failed("invalid number");
    }
    if (pos_ < text_.size() && (text_[pos_] == 'e' || text_[pos_] == 'E')) {
      integral = false;
      ++pos_;
      if (pos_ < text_.size() && (text_[pos_] == '+' || text_[pos_] == '-')) ++pos_;
      const size_t e = pos_;
      while (pos_ < text_.size() && text_[pos_] >= '0' && text_[pos_] <= '9') ++pos_;
      if (pos_ == e) return failed("invalid number");
    }
    const std::string literal_text(text_.substr(start, pos_ - start));
    out.number = std::strtod(literal_text.c_str(), nullptr);
    if (integral && int_digits <= 20) {
      uint64_t value = 0;
      bool overflow = false;
      for (size_t i = digits_start; i < digits_start + int_digits; ++i) {
        const uint64_t d = text_[i] - '0';
        if (value > (UINT64_MAX - d) / 10) { overflow = true; break; }
        value = value * 10 + d;
      }
      if (!overflow) {
        out.unsigned_integer = value;
        out.negative_integer = negative && value != 0;
      }
    }
    return true;
  }

  std::string_view text_;
  std::string& error_;
  size_t pos_ = 0;
};

}  // namespace

const JsonValue* JsonValue::find(std::string_view key) const {
  for (const auto& [k, v] : object)
    if (k == key) return &v;
  return nullptr;
}

std::optional<JsonValue> parse_json(std::string_view text, std::string& error) {
  error.clear();
  return Parser(text, error).parse_document();
}

}  // namespace wan::io
