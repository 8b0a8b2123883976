#pragma once
// The smallest HTTP/1.1 both the admin endpoint and the `sluice queue` client need: one request
// per connection, bounded head and body sizes, blocking client sockets. Control plane only.
// Untrusted input: parsing never asserts, every malformed head is an error value (a 4xx).
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "engine/io/address.h"

namespace sluice::app {

// A request head (request line + header fields + blank line) larger than this gets 431.
inline constexpr size_t kHttpRequestOctetsMax = 16 << 10;
inline constexpr size_t kHttpHeaderFieldsMax = 100;

struct HttpRequest {
  std::string method;
  std::string path;     // without the query
  std::string version;  // "HTTP/1.1"
  absl::flat_hash_map<std::string, std::string> query;
  // Field names in lower case, values with surrounding whitespace trimmed. A repeated field
  // is an error for the fields we read (host, authorization), kept as the last one otherwise.
  absl::flat_hash_map<std::string, std::string> headers;

  const std::string* header(std::string_view lower_case_name) const;
};

struct HttpResponse {
  int status = 200;
  std::string content_type = "application/json";
  std::string body;
  std::vector<std::pair<std::string, std::string>> headers;  // extra fields
};

// Where the head ends (the offset just past the blank line), accepting CRLF and bare LF line
// ends; npos while incomplete.
size_t find_http_head_end(std::string_view buffer);
// Parses "METHOD /path?a=b HTTP/1.x" + header fields; line ends CRLF or bare LF.
absl::StatusOr<HttpRequest> parse_http_request(std::string_view head);
// `with_body` false: the head of a HEAD answer (Content-Length still that of the body).
std::string format_http_response(const HttpResponse& response, bool with_body = true);
const char* http_reason_phrase(int status);

// Where the admin endpoint listens or the CLI connects: TCP, or a Unix socket path.
struct HttpEndpoint {
  io::SocketAddress tcp;
  std::string unix_path;  // non-empty: a Unix stream socket

  std::string to_string() const;  // "127.0.0.1:9025" or "unix:/run/sluice/admin.sock"
};

// Client side: one request. `bearer_token` non-empty adds "Authorization: Bearer ...".
absl::StatusOr<HttpResponse> http_call(const HttpEndpoint& server, std::string_view method,
                                       std::string_view path_and_query, std::string_view bearer_token = {});
std::string json_escape(std::string_view text);
std::string url_decode(std::string_view text);

}  // namespace sluice::app
