#pragma once
// The smallest HTTP/1.1 both the admin endpoint and the `sluice queue` client need: one request
// per connection, bounded header and body sizes, blocking sockets. Control plane only.
#include <cstdint>
#include <string>
#include <string_view>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "engine/io/address.h"

namespace sluice::app {

inline constexpr size_t kHttpRequestOctetsMax = 16 << 10;

struct HttpRequest {
  std::string method;
  std::string path;  // without the query
  absl::flat_hash_map<std::string, std::string> query;
};

struct HttpResponse {
  int status = 200;
  std::string content_type = "application/json";
  std::string body;
};

// Parses "METHOD /path?a=b HTTP/1.x\r\n...". Headers are read but ignored.
absl::StatusOr<HttpRequest> parse_http_request(std::string_view head);
std::string format_http_response(const HttpResponse& response);
// Client side: one request, returns status code and body.
absl::StatusOr<HttpResponse> http_call(const io::SocketAddress& server, std::string_view method,
                                       std::string_view path_and_query);
std::string json_escape(std::string_view text);
std::string url_decode(std::string_view text);

}  // namespace sluice::app
