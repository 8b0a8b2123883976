// Recursive descent over RFC 8259 JSON, nesting bounded (a file is input: it gets an error,
// never an assert).
#include "bench/sink/json_reader.h"

#include <charconv>

#include "absl/status/status.h"
#include "engine/io/strings.h"

namespace sluice::bench {
namespace {

constexpr int kDepthMax = 64;

class Parser {
 public:
  explicit Parser(std::string_view text) : _text(text) {}

  absl::StatusOr<JsonValue> document() {
    JsonValue value;
    if (!parse_value(value, 0)) {
      return error();
    }
    skip_space();
    if (_pos != _text.size()) {
      _error = "text after the value";
      return error();
    }
    return value;
  }

 private:
  absl::Status error() const {
    return absl::InvalidArgumentError(to_absl(str_cat("JSON at offset ", _pos, ": ", _error)));
  }
  void skip_space() {
    while (_pos < _text.size() && (_text[_pos] == ' ' || _text[_pos] == '\t' || _text[_pos] == '\n' || _text[_pos] == '\r')) {
      ++_pos;
    }
  }
  bool fail(const char* what) {
    _error = what;
    return false;
  }
  bool literal(std::string_view word) {
    if (_text.substr(_pos, word.size()) != word) {
      return fail("unknown literal");
    }
    _pos += word.size();
    return true;
  }

  bool parse_value(JsonValue& value, int depth) {
    if (depth > kDepthMax) {
      return fail("nested too deep");
    }
    skip_space();
    if (_pos >= _text.size()) {
      return fail("unexpected end");
    }
    switch (_text[_pos]) {
      case '{':
        return parse_object(value, depth);
      case '[':
        return parse_array(value, depth);
      case '"':
        value.type = JsonValue::Type::string;
        return parse_string(value.text);
      case 't':
        value.type = JsonValue::Type::boolean;
        value.boolean = true;
        return literal("true");
      case 'f':
        value.type = JsonValue::Type::boolean;
        return literal("false");
      case 'n':
        return literal("null");
      default:
        return parse_number(value);
    }
  }

  bool parse_number(JsonValue& value) {
    const size_t start = _pos;
    while (_pos < _text.size() && (std::string_view("+-0123456789.eE").find(_text[_pos]) != std::string_view::npos)) {
      ++_pos;
    }
    if (_pos == start) {
      return fail("unexpected character");
    }
    value.type = JsonValue::Type::number;
    value.text.assign(_text.substr(start, _pos - start));
    return true;
  }

  bool parse_string(std::string& out) {
    ++_pos;  // the opening quote
    while (_pos < _text.size()) {
      const char c = _text[_pos++];
      if (c == '"') {
        return true;
      }
      if (static_cast<unsigned char>(c) < 0x20) {
        return fail("control character in a string");
      }
      if (c != '\\') {
        out.push_back(c);
        continue;
      }
      if (_pos >= _text.size()) {
        break;
      }
      const char e = _text[_pos++];
      switch (e) {
        case '"':
        case '\\':
        case '/':
          out.push_back(e);
          break;
        case 'b':
          out.push_back('\b');
          break;
        case 'f':
          out.push_back('\f');
          break;
        case 'n':
          out.push_back('\n');
          break;
        case 'r':
          out.push_back('\r');
          break;
        case 't':
          out.push_back('\t');
          break;
        case 'u':
          if (!parse_unicode_escape(out)) {
            return false;
          }
          break;
        default:
          return fail("bad escape");
      }
    }
    return fail("unterminated string");
  }

  // \uXXXX as UTF-8 (a surrogate pair is combined; a lone surrogate becomes U+FFFD).
  bool parse_unicode_escape(std::string& out) {
    uint32_t code = 0;
    if (!hex4(code)) {
      return false;
    }
    if (code >= 0xD800 && code < 0xDC00 && _text.substr(_pos, 2) == "\\u") {
      _pos += 2;
      uint32_t low = 0;
      if (!hex4(low)) {
        return false;
      }
      code = low >= 0xDC00 && low < 0xE000 ? 0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00) : 0xFFFD;
    } else if (code >= 0xD800 && code < 0xE000) {
      code = 0xFFFD;
    }
    if (code < 0x80) {
      out.push_back(static_cast<char>(code));
    } else if (code < 0x800) {
      out.push_back(static_cast<char>(0xC0 | (code >> 6)));
      out.push_back(static_cast<char>(0x80 | (code & 0x3F)));
    } else if (code < 0x10000) {
      out.push_back(static_cast<char>(0xE0 | (code >> 12)));
      out.push_back(static_cast<char>(0x80 | ((code >> 6) & 0x3F)));
      out.push_back(static_cast<char>(0x80 | (code & 0x3F)));
    } else {
      out.push_back(static_cast<char>(0xF0 | (code >> 18)));
      out.push_back(static_cast<char>(0x80 | ((code >> 12) & 0x3F)));
      out.push_back(static_cast<char>(0x80 | ((code >> 6) & 0x3F)));
      out.push_back(static_cast<char>(0x80 | (code & 0x3F)));
    }
    return true;
  }

  bool hex4(uint32_t& code) {
    if (_pos + 4 > _text.size()) {
      return fail("short \\u escape");
    }
    const auto result = std::from_chars(_text.data() + _pos, _text.data() + _pos + 4, code, 16);
    if (result.ec != std::errc() || result.ptr != _text.data() + _pos + 4) {
      return fail("bad \\u escape");
    }
    _pos += 4;
    return true;
  }

  bool parse_array(JsonValue& value, int depth) {
    value.type = JsonValue::Type::array;
    ++_pos;
    skip_space();
    if (_pos < _text.size() && _text[_pos] == ']') {
      ++_pos;
      return true;
    }
    while (true) {
      value.items.emplace_back();
      if (!parse_value(value.items.back(), depth + 1)) {
        return false;
      }
      skip_space();
      if (_pos >= _text.size()) {
        return fail("unterminated array");
      }
      const char c = _text[_pos++];
      if (c == ']') {
        return true;
      }
      if (c != ',') {
        return fail("expected , or ]");
      }
    }
  }

  bool parse_object(JsonValue& value, int depth) {
    value.type = JsonValue::Type::object;
    ++_pos;
    skip_space();
    if (_pos < _text.size() && _text[_pos] == '}') {
      ++_pos;
      return true;
    }
    while (true) {
      skip_space();
      if (_pos >= _text.size() || _text[_pos] != '"') {
        return fail("expected a member name");
      }
      value.members.emplace_back();
      if (!parse_string(value.members.back().first)) {
        return false;
      }
      skip_space();
      if (_pos >= _text.size() || _text[_pos] != ':') {
        return fail("expected :");
      }
      ++_pos;
      if (!parse_value(value.members.back().second, depth + 1)) {
        return false;
      }
      skip_space();
      if (_pos >= _text.size()) {
        return fail("unterminated object");
      }
      const char c = _text[_pos++];
      if (c == '}') {
        return true;
      }
      if (c != ',') {
        return fail("expected , or }");
      }
    }
  }

  std::string_view _text;
  size_t _pos = 0;
  const char* _error = "";
};

}  // namespace

const JsonValue* JsonValue::get(std::string_view key) const {
  for (const auto& [name, value] : members) {
    if (name == key) {
      return &value;
    }
  }
  return nullptr;
}

bool JsonValue::as_uint(uint64_t& value) const {
  if (type != Type::number) {
    return false;
  }
  const auto result = std::from_chars(text.data(), text.data() + text.size(), value);
  return result.ec == std::errc() && result.ptr == text.data() + text.size();
}

absl::StatusOr<JsonValue> parse_json(std::string_view text) {
  return Parser(text).document();
}

}  // namespace sluice::bench
