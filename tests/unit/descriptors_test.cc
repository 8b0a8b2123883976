// The start-up descriptor plan: every part has its share, inbound sessions get the rest, and a
// limit too small for the fixed parts is refused rather than run into EMFILE later.
#include "engine/app/descriptors.h"

#include "gtest/gtest.h"

namespace sluice::app {
namespace {

TEST(DescriptorPlan, InboundGetsWhatTheOtherPartsLeave) {
  DescriptorDemand demand;
  demand.limit = 20000;
  demand.shards = 2;
  demand.spool_per_shard = 70;
  demand.listeners_per_shard = 1;
  const DescriptorBudget budget = plan_descriptors(demand);
  ASSERT_TRUE(budget.fits);
  EXPECT_EQ(budget.spool, 140u);
  EXPECT_EQ(budget.dns, 2 * kDnsDescriptorsPerShard);
  EXPECT_EQ(budget.engine, 2u * (1 + 3));
  EXPECT_EQ(budget.reserve, kDescriptorReserve);
  EXPECT_EQ(budget.inbound + budget.spool + budget.dns + budget.engine + budget.reserve + budget.outbound, 20000u);
  EXPECT_NE(budget.to_log_fields().find("inbound="), std::string::npos);
}

TEST(DescriptorPlan, ConfiguredSessionsCapInboundAndOutboundHasItsShare) {
  DescriptorDemand demand;
  demand.limit = 20000;
  demand.spool_per_shard = 70;
  demand.outbound = 4000;
  demand.sessions_configured = 1000;
  EXPECT_EQ(plan_descriptors(demand).inbound, 1000u);
  demand.sessions_configured = 0;
  const DescriptorBudget budget = plan_descriptors(demand);
  EXPECT_EQ(budget.outbound, 4000u + kSegmentReadersPerShard);
  EXPECT_EQ(budget.inbound,
            20000u - 4000 - kSegmentReadersPerShard - 70 - kDnsDescriptorsPerShard - 3 - kDescriptorReserve);
}

TEST(DescriptorPlan, ALimitBelowTheFixedPartsDoesNotFit) {
  DescriptorDemand demand;
  demand.shards = 4;
  demand.spool_per_shard = 70;
  demand.limit = kDescriptorReserve + 4 * 70;  // no room for DNS or a single session
  const DescriptorBudget budget = plan_descriptors(demand);
  EXPECT_FALSE(budget.fits);
  EXPECT_GT(budget.needed, demand.limit);
  demand.limit = budget.needed;
  EXPECT_TRUE(plan_descriptors(demand).fits);
  EXPECT_EQ(plan_descriptors(demand).inbound, kInboundSessionsMin);
}

}  // namespace
}  // namespace sluice::app
