// Minimal HTTP for the admin endpoint and its CLI client (control plane, blocking I/O).
#include "engine/app/http.h"

#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "engine/io/strings.h"

namespace sluice::app {
namespace {

constexpr int kClientTimeoutMs = 10'000;
constexpr size_t kResponseOctetsMax = 1100 << 20;  // a whole message (at most 1 GiB) plus JSON

int hex_value(char c) {
  if (c >= '0' && c <= '9')
    return c - '0';
  if (c >= 'a' && c <= 'f')
    return c - 'a' + 10;
  if (c >= 'A' && c <= 'F')
    return c - 'A' + 10;
  return -1;
}

// Header fields whose repetition makes the request ambiguous (RFC 9110 section 5.3).
bool must_be_single(std::string_view name) {
  return name == "host" || name == "authorization" || name == "content-length";
}

bool valid_token_char(char c) {
  // RFC 9110 tchar.
  return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
         std::string_view("!#$%&'*+-.^_`|~").find(c) != std::string_view::npos;
}

}  // namespace

const char* http_reason_phrase(int status) {
  switch (status) {
    case 200:
      return "OK";
    case 202:
      return "Accepted";
    case 400:
      return "Bad Request";
    case 401:
      return "Unauthorized";
    case 403:
      return "Forbidden";
    case 404:
      return "Not Found";
    case 405:
      return "Method Not Allowed";
    case 408:
      return "Request Timeout";
    case 421:
      return "Misdirected Request";
    case 431:
      return "Request Header Fields Too Large";
    case 500:
      return "Internal Server Error";
    case 503:
      return "Service Unavailable";
    case 504:
      return "Gateway Timeout";
    default:
      return "Error";
  }
}

const std::string* HttpRequest::header(std::string_view lower_case_name) const {
  const auto it = headers.find(to_absl(lower_case_name));
  return it == headers.end() ? nullptr : &it->second;
}

std::string url_decode(std::string_view text) {
  std::string out;
  for (size_t i = 0; i < text.size(); ++i) {
    if (text[i] == '+') {
      out.push_back(' ');
    } else if (text[i] == '%' && i + 2 < text.size() && hex_value(text[i + 1]) >= 0 && hex_value(text[i + 2]) >= 0) {
      out.push_back(static_cast<char>(hex_value(text[i + 1]) * 16 + hex_value(text[i + 2])));
      i += 2;
    } else {
      out.push_back(text[i]);
    }
  }
  return out;
}

size_t find_http_head_end(std::string_view buffer) {
  // The blank line: LF, optional CR, LF (covers CRLFCRLF, LFLF, CRLFLF and LFCRLF).
  for (size_t lf = buffer.find('\n'); lf != std::string_view::npos; lf = buffer.find('\n', lf + 1)) {
    size_t next = lf + 1;
    if (next < buffer.size() && buffer[next] == '\r') {
      ++next;
    }
    if (next < buffer.size() && buffer[next] == '\n') {
      return next + 1;
    }
  }
  return std::string_view::npos;
}

absl::StatusOr<HttpRequest> parse_http_request(std::string_view head) {
  std::vector<std::string_view> lines;
  while (!head.empty()) {
    const size_t lf = head.find('\n');
    if (lf == std::string_view::npos) {
      break;  // no line end: not a complete head
    }
    std::string_view line = head.substr(0, lf);
    if (!line.empty() && line.back() == '\r') {
      line.remove_suffix(1);
    }
    head.remove_prefix(lf + 1);
    if (line.empty()) {
      break;
    }
    lines.push_back(line);
  }
  if (lines.empty()) {
    return absl::InvalidArgumentError("no request line");
  }
  std::vector<absl::string_view> parts = absl::StrSplit(to_absl(lines[0]), ' ');
  if (parts.size() != 3 || !absl::StartsWith(parts[2], "HTTP/1.") || parts[0].empty() || parts[1].empty()) {
    return absl::InvalidArgumentError("bad request line");
  }
  HttpRequest request;
  request.method = std::string(parts[0]);
  request.version = std::string(parts[2]);
  const std::string_view target = to_std(parts[1]);
  const size_t question = target.find('?');
  request.path = url_decode(target.substr(0, question));
  if (question != std::string_view::npos) {
    for (absl::string_view piece : absl::StrSplit(to_absl(target.substr(question + 1)), '&', absl::SkipEmpty())) {
      const std::string_view pair = to_std(piece);
      const size_t equals = pair.find('=');
      request.query[url_decode(pair.substr(0, equals))] =
          equals == std::string_view::npos ? "" : url_decode(pair.substr(equals + 1));
    }
  }
  if (lines.size() - 1 > kHttpHeaderFieldsMax) {
    return absl::InvalidArgumentError("too many header fields");
  }
  for (size_t i = 1; i < lines.size(); ++i) {
    const std::string_view line = lines[i];
    const size_t colon = line.find(':');
    if (colon == std::string_view::npos || colon == 0) {
      return absl::InvalidArgumentError("malformed header field");
    }
    const std::string_view name = line.substr(0, colon);
    for (const char c : name) {
      if (!valid_token_char(c)) {
        return absl::InvalidArgumentError("malformed header field name");
      }
    }
    std::string lower = to_lower(name);
    const std::string value(strip_whitespace(line.substr(colon + 1)));
    if (must_be_single(lower) && request.headers.contains(lower)) {
      return absl::InvalidArgumentError(str_cat("repeated header field ", lower));
    }
    request.headers[std::move(lower)] = value;
  }
  return request;
}

std::string format_http_response(const HttpResponse& response, bool with_body) {
  std::string out =
      str_cat("HTTP/1.1 ", response.status, " ", http_reason_phrase(response.status),
              "\r\nContent-Type: ", response.content_type, "\r\nContent-Length: ", response.body.size(), "\r\n");
  for (const auto& [name, value] : response.headers) {
    str_append(&out, name, ": ", value, "\r\n");
  }
  out += "Connection: close\r\n\r\n";
  if (with_body) {
    out += response.body;
  }
  return out;
}

std::string json_escape(std::string_view text) {
  std::string out;
  out.reserve(text.size() + 2);
  for (const char c : text) {
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\r':
        out += "\\r";
        break;
      case '\t':
        out += "\\t";
        break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) {
          out += absl::StrFormat("\\u%04x", static_cast<unsigned char>(c));
        } else {
          out.push_back(c);
        }
    }
  }
  return out;
}

std::string HttpEndpoint::to_string() const {
  return unix_path.empty() ? tcp.to_string() : str_cat("unix:", unix_path);
}

namespace {

absl::StatusOr<int> connect_to(const HttpEndpoint& server) {
  const bool unix_socket = !server.unix_path.empty();
  const int fd = socket(unix_socket ? AF_UNIX : server.tcp.family(), SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    return absl::InternalError(str_cat("socket: ", std::strerror(errno)));
  }
  int connected = -1;
  if (unix_socket) {
    sockaddr_un address{};
    address.sun_family = AF_UNIX;
    if (server.unix_path.size() >= sizeof(address.sun_path)) {
      close(fd);
      return absl::InvalidArgumentError(str_cat("unix socket path too long: ", server.unix_path));
    }
    std::memcpy(address.sun_path, server.unix_path.data(), server.unix_path.size());
    connected = connect(fd, reinterpret_cast<const sockaddr*>(&address), sizeof(address));
  } else {
    connected = connect(fd, server.tcp.get(), server.tcp.length);
  }
  if (connected < 0) {
    const int error = errno;
    close(fd);
    return absl::UnavailableError(
        str_cat("cannot reach the admin endpoint at ", server.to_string(), ": ", std::strerror(error)));
  }
  return fd;
}

}  // namespace

absl::StatusOr<HttpResponse> http_call(const HttpEndpoint& server, std::string_view method,
                                       std::string_view path_and_query, std::string_view bearer_token) {
  auto connected = connect_to(server);
  if (!connected.ok()) {
    return connected.status();
  }
  const int fd = *connected;
  // Over a Unix socket there is no authority to name; the server does not check Host there.
  const std::string host = server.unix_path.empty() ? server.tcp.to_string() : std::string("localhost");
  std::string request = str_cat(method, " ", path_and_query, " HTTP/1.1\r\nHost: ", host, "\r\n");
  if (!bearer_token.empty()) {
    str_append(&request, "Authorization: Bearer ", bearer_token, "\r\n");
  }
  request += "Content-Length: 0\r\nConnection: close\r\n\r\n";
  if (send(fd, request.data(), request.size(), MSG_NOSIGNAL) != static_cast<ssize_t>(request.size())) {
    close(fd);
    return absl::UnavailableError("send to the admin endpoint failed");
  }
  std::string raw;
  std::string buffer(1 << 20, '\0');
  while (raw.size() < kResponseOctetsMax) {
    pollfd waiting{fd, POLLIN, 0};
    if (poll(&waiting, 1, kClientTimeoutMs) <= 0) {
      close(fd);
      return absl::DeadlineExceededError("the admin endpoint did not answer");
    }
    const ssize_t got = recv(fd, buffer.data(), buffer.size(), 0);
    if (got <= 0) {
      break;
    }
    raw.append(buffer.data(), static_cast<size_t>(got));
  }
  close(fd);
  const size_t head_end = find_http_head_end(raw);
  if (head_end == std::string::npos || raw.size() < 12 || !raw.starts_with("HTTP/1.")) {
    return absl::DataLossError("malformed response from the admin endpoint");
  }
  HttpResponse response;
  uint32_t status = 0;
  if (!parse_decimal(std::string_view(raw).substr(9, 3), status)) {
    return absl::DataLossError("malformed status line from the admin endpoint");
  }
  response.status = static_cast<int>(status);
  // The status line is not a request line; parse the fields after it.
  const std::string_view fields = std::string_view(raw).substr(0, head_end);
  for (absl::string_view piece : absl::StrSplit(to_absl(fields), '\n', absl::SkipEmpty())) {
    std::string_view line = to_std(piece);
    if (!line.empty() && line.back() == '\r') {
      line.remove_suffix(1);
    }
    const size_t colon = line.find(':');
    if (colon == std::string_view::npos || line.starts_with("HTTP/")) {
      continue;
    }
    const std::string name = to_lower(line.substr(0, colon));
    const std::string value(strip_whitespace(line.substr(colon + 1)));
    if (name == "content-type") {
      response.content_type = value;
    } else if (name != "content-length" && name != "connection") {
      response.headers.emplace_back(name, value);
    }
  }
  response.body = raw.substr(head_end);
  return response;
}

}  // namespace sluice::app
