// The start-up descriptor plan (descriptors.h). Pure arithmetic: unit-tested, logged once.
#include "engine/app/descriptors.h"

#include <algorithm>

#include "absl/strings/str_cat.h"

namespace sluice::app {

DescriptorBudget plan_descriptors(const DescriptorDemand& demand) {
  DescriptorBudget budget;
  budget.limit = demand.limit;
  budget.reserve = kDescriptorReserve;
  budget.spool = demand.spool_per_shard * demand.shards;
  budget.dns = kDnsDescriptorsPerShard * demand.shards;
  budget.engine = (demand.listeners_per_shard + demand.ring_per_shard) * demand.shards;
  budget.outbound = demand.outbound + kSegmentReadersPerShard * demand.shards;
  const uint64_t fixed = budget.reserve + budget.spool + budget.dns + budget.engine + budget.outbound;
  budget.needed = fixed + kInboundSessionsMin;
  budget.fits = demand.limit >= budget.needed;
  if (!budget.fits) {
    return budget;
  }
  budget.inbound = demand.limit - fixed;
  if (demand.sessions_configured > 0) {
    budget.inbound = std::min(budget.inbound, demand.sessions_configured);
  }
  return budget;
}

std::string DescriptorBudget::to_log_fields() const {
  return absl::StrCat("descriptors_limit=", limit, " inbound=", inbound, " outbound=", outbound, " spool=", spool,
                      " dns=", dns, " engine=", engine, " reserve=", reserve);
}

}  // namespace sluice::app
