#pragma once
// Delivery status notifications (RFC 3464, RFC 3461, RFC 6522): the message Sluice sends to an
// envelope sender when it gives up on recipients (Action: failed), and, when asked, when it is
// still trying (delayed) or has relayed to a next hop without DSN (relayed). Pure: a report in,
// the whole DSN message out, in the spool's wire form (CRLF lines, dot-stuffed), ready to be
// stored as a new message from <> to the original sender.
//
// What it must never do: let a remote server's reply or a client's address inject a header
// field or a MIME boundary (every value is put on one line, control characters replaced, and
// bounded), or produce a line over 998 octets. Deciding whether to send a DSN at all (NOTIFY,
// never for a message from <>) is the caller's: see dsn_wanted().
//
// Choices: the original is returned whole only for RET=FULL; for RET=HDRS and when RET was not
// given, only its header (text/rfc822-headers), so a bounce of a bulk message stays small. ENVID
// and ORCPT are kept xtext-encoded in the spool and decoded here (RFC 3461 4.2, 4.4); a decoded
// value with control characters is left out rather than risk a broken field.
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace sluice::relay {

enum class DsnAction : uint8_t { failed, delayed, delivered, relayed };
std::string_view dsn_action_name(DsnAction action);

// RET= of the original MAIL (the spool's spool::DsnRet, same values).
enum class DsnReturn : uint8_t { not_given = 0, full = 1, headers = 2 };

// NOTIFY= bits of a recipient as in the spool (spool::kNotify*), 0 when not given.
inline constexpr uint8_t kDsnNotifyNever = 1u << 0;
inline constexpr uint8_t kDsnNotifySuccess = 1u << 1;
inline constexpr uint8_t kDsnNotifyFailure = 1u << 2;
inline constexpr uint8_t kDsnNotifyDelay = 1u << 3;

// Whether a recipient's outcome is reported to the sender: never for a message from <> (no
// bounce of a bounce); NOTIFY not given means FAILURE (and DELAY, RFC 3461 4.1, which the caller
// may decide not to use); NEVER means none.
bool dsn_wanted(std::string_view envelope_sender, uint8_t notify, DsnAction action);

struct DsnRecipient {
  std::string final_recipient;  // the envelope recipient we tried
  std::string orcpt;            // ORCPT as sent ("rfc822;" + xtext), or empty
  DsnAction action = DsnAction::failed;
  std::string status;      // enhanced status code, "5.1.1"
  std::string remote_mta;  // the host that answered, or empty (e.g. DNS failure)
  // The remote reply as received (lines joined): "smtp" type; or our own reason ("5.3.4 ..."),
  // written with type "X-Sluice"; or empty.
  std::string diagnostic;
  int64_t last_attempt_s = 0;
  int64_t will_retry_until_s = 0;  // delayed: when we give up
};

struct DsnReport {
  std::string reporting_mta;    // our hostname
  std::string original_sender;  // the envelope sender: the DSN's To:
  std::string queue_id;         // the original message's queue id
  std::string envid;            // ENVID as sent (xtext), or empty
  DsnReturn ret = DsnReturn::not_given;
  int64_t arrival_s = 0;
  int64_t now_s = 0;       // the DSN's Date:
  std::string boundary;    // unique per DSN (e.g. from the new queue id); only [A-Za-z0-9./=_-]
  std::string message_id;  // the DSN's Message-ID without <>
  std::vector<DsnRecipient> recipients;
};

struct BuiltDsn {
  std::string wire;        // header and body, CRLF, dot-stuffed, without the final ".\r\n"
  bool body_8bit = false;  // the returned original part has 8-bit octets
};

// `original_wire`: the original message as stored (CRLF, dot-stuffed).
BuiltDsn build_dsn(const DsnReport& report, std::string_view original_wire);

// RFC 3461 4: "+HH" -> octet. Invalid escapes are kept as they are.
std::string xtext_decode(std::string_view text);

}  // namespace sluice::relay
