// Minimal HTTP for the admin endpoint and its CLI client (control plane, blocking I/O).
#include "engine/app/http.h"

#include <poll.h>
#include <sys/socket.h>
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
constexpr size_t kResponseOctetsMax = 256 << 20;

const char* reason_phrase(int status) {
  switch (status) {
    case 200:
      return "OK";
    case 202:
      return "Accepted";
    case 400:
      return "Bad Request";
    case 404:
      return "Not Found";
    case 405:
      return "Method Not Allowed";
    case 503:
      return "Service Unavailable";
    default:
      return "Error";
  }
}

int hex_value(char c) {
  if (c >= '0' && c <= '9')
    return c - '0';
  if (c >= 'a' && c <= 'f')
    return c - 'a' + 10;
  if (c >= 'A' && c <= 'F')
    return c - 'A' + 10;
  return -1;
}

}  // namespace

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

absl::StatusOr<HttpRequest> parse_http_request(std::string_view head) {
  const size_t line_end = head.find("\r\n");
  if (line_end == std::string_view::npos) {
    return absl::InvalidArgumentError("no request line");
  }
  std::vector<absl::string_view> parts = absl::StrSplit(to_absl(head.substr(0, line_end)), ' ');
  if (parts.size() != 3 || !absl::StartsWith(parts[2], "HTTP/1.")) {
    return absl::InvalidArgumentError("bad request line");
  }
  HttpRequest request;
  request.method = std::string(parts[0]);
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
  return request;
}

std::string format_http_response(const HttpResponse& response) {
  return str_cat("HTTP/1.1 ", response.status, " ", reason_phrase(response.status),
                 "\r\nContent-Type: ", response.content_type, "\r\nContent-Length: ", response.body.size(),
                 "\r\nConnection: close\r\n\r\n", response.body);
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

absl::StatusOr<HttpResponse> http_call(const io::SocketAddress& server, std::string_view method,
                                       std::string_view path_and_query) {
  const int fd = socket(server.family(), SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    return absl::InternalError(str_cat("socket: ", std::strerror(errno)));
  }
  if (connect(fd, server.get(), server.length) < 0) {
    const int error = errno;
    close(fd);
    return absl::UnavailableError(
        str_cat("cannot reach the admin endpoint at ", server.to_string(), ": ", std::strerror(error)));
  }
  const std::string request = str_cat(method, " ", path_and_query, " HTTP/1.1\r\nHost: ", server.to_string(),
                                      "\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
  if (send(fd, request.data(), request.size(), MSG_NOSIGNAL) != static_cast<ssize_t>(request.size())) {
    close(fd);
    return absl::UnavailableError("send to the admin endpoint failed");
  }
  std::string raw;
  char buffer[65536];
  while (raw.size() < kResponseOctetsMax) {
    pollfd waiting{fd, POLLIN, 0};
    if (poll(&waiting, 1, kClientTimeoutMs) <= 0) {
      close(fd);
      return absl::DeadlineExceededError("the admin endpoint did not answer");
    }
    const ssize_t got = recv(fd, buffer, sizeof(buffer), 0);
    if (got <= 0) {
      break;
    }
    raw.append(buffer, static_cast<size_t>(got));
  }
  close(fd);
  const size_t head_end = raw.find("\r\n\r\n");
  if (head_end == std::string::npos || raw.size() < 12) {
    return absl::DataLossError("malformed response from the admin endpoint");
  }
  HttpResponse response;
  uint32_t status = 0;
  if (!parse_decimal(std::string_view(raw).substr(9, 3), status)) {
    return absl::DataLossError("malformed status line from the admin endpoint");
  }
  response.status = static_cast<int>(status);
  response.body = raw.substr(head_end + 4);
  return response;
}

}  // namespace sluice::app
