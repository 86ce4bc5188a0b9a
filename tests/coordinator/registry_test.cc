// The registry of participants on its own: sessions open, re-open (a new
// id replaces the old one), close; liveness from the last time a
// participant was heard from; the alive lists and counts the round engine
// selects from.
#include "coordinator/registry.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <chrono>

namespace fedpeft {
namespace coordinator {
namespace {

using ::testing::ElementsAre;
using ::testing::StartsWith;

constexpr double kTimeout = 30;

WorkerProfile Profile(const std::string& id, bool edge = false) {
  WorkerProfile p;
  p.worker_id = id;
  p.num_samples = 7;
  p.edge = edge;
  return p;
}

TEST(RegistryTest, OpenGivesASessionThatFindsTheParticipant) {
  Registry registry("fed", kTimeout);
  bool rejoin = true;
  Participant& a = registry.Open(Profile("a"), &rejoin);
  EXPECT_FALSE(rejoin);
  EXPECT_THAT(a.session_id, StartsWith("fed/a/"));
  EXPECT_EQ(a.profile.num_samples, 7u);
  EXPECT_EQ(registry.FindSession(a.session_id), &a);
  EXPECT_EQ(registry.Find("a"), &a);
  EXPECT_EQ(registry.FindSession("fed/a/0"), nullptr);
  EXPECT_EQ(registry.Find("b"), nullptr);
  EXPECT_EQ(registry.size(), 1u);
}

TEST(RegistryTest, ReopenReplacesTheSessionAndKeepsTheEntry) {
  Registry registry("fed", kTimeout);
  bool rejoin = false;
  Participant& first = registry.Open(Profile("a"), &rejoin);
  first.rounds_completed = 3;
  first.rank = 2;
  const std::string old_session = first.session_id;

  WorkerProfile again = Profile("a");
  again.num_samples = 99;
  Participant& second = registry.Open(again, &rejoin);
  EXPECT_TRUE(rejoin);
  EXPECT_NE(second.session_id, old_session);
  EXPECT_EQ(registry.FindSession(old_session), nullptr);
  EXPECT_EQ(registry.FindSession(second.session_id), &second);
  // The same participant: what the engine kept about it stays, the profile
  // is the new one.
  EXPECT_EQ(second.rounds_completed, 3u);
  EXPECT_EQ(second.rank, 2);
  EXPECT_EQ(second.profile.num_samples, 99u);
  EXPECT_EQ(registry.size(), 1u);
}

TEST(RegistryTest, CloseEndsTheSessionAndLiveness) {
  Registry registry("fed", kTimeout);
  bool rejoin = false;
  const std::string session = registry.Open(Profile("a"), &rejoin).session_id;
  registry.Open(Profile("b"), &rejoin);

  EXPECT_TRUE(registry.Close("a"));
  const Participant* a = registry.Find("a");
  ASSERT_NE(a, nullptr);
  EXPECT_TRUE(a->session_id.empty());
  EXPECT_EQ(registry.FindSession(session), nullptr);
  EXPECT_FALSE(registry.IsAlive(*a, Clock::now()));
  EXPECT_THAT(registry.Alive(), ElementsAre("b"));
  // Nothing left to close, and nobody by that name.
  EXPECT_FALSE(registry.Close("a"));
  EXPECT_FALSE(registry.Close("nobody"));

  // Registering again makes it alive with a new session.
  Participant& back = registry.Open(Profile("a"), &rejoin);
  EXPECT_FALSE(rejoin);  // it had no open session
  EXPECT_NE(back.session_id, session);
  EXPECT_THAT(registry.Alive(), ElementsAre("a", "b"));
}

TEST(RegistryTest, AliveWhileHeardFromWithinTheTimeout) {
  Registry registry("fed", kTimeout);
  bool rejoin = false;
  Participant& a = registry.Open(Profile("a"), &rejoin);
  const Clock::time_point seen = a.last_seen;
  EXPECT_TRUE(registry.IsAlive(a, seen));
  EXPECT_TRUE(registry.IsAlive(a, seen + std::chrono::seconds(29)));
  EXPECT_FALSE(registry.IsAlive(a, seen + std::chrono::seconds(31)));

  // Heard from a minute ago: not in Alive() any more.
  a.last_seen = Clock::now() - std::chrono::seconds(60);
  EXPECT_TRUE(registry.Alive().empty());
  EXPECT_EQ(registry.AliveCounts().direct, 0);
}

TEST(RegistryTest, AliveIsSortedAndCountsEdgesApart) {
  Registry registry("fed", kTimeout);
  bool rejoin = false;
  for (const char* id : {"w3", "edge-b", "w1", "edge-a", "w2"}) {
    registry.Open(Profile(id, std::string(id).rfind("edge", 0) == 0), &rejoin);
  }
  registry.Find("w2")->last_seen = Clock::now() - std::chrono::minutes(5);
  EXPECT_THAT(registry.Alive(), ElementsAre("edge-a", "edge-b", "w1", "w3"));
  const Registry::Counts counts = registry.AliveCounts();
  EXPECT_EQ(counts.edges, 2);
  EXPECT_EQ(counts.direct, 2);
  EXPECT_EQ(registry.size(), 5u);
}

TEST(RegistryTest, EntryCreatesAParticipantWithoutASession) {
  // How a resumed coordinator restores ranks before anyone registers.
  Registry registry("fed", kTimeout);
  Participant& e = registry.Entry("later");
  e.rank = 3;
  EXPECT_TRUE(e.session_id.empty());
  EXPECT_EQ(registry.Find("later")->rank, 3);
  EXPECT_FALSE(registry.Close("later"));  // no session to close

  // Registering keeps what was restored.
  bool rejoin = true;
  Participant& p = registry.Open(Profile("later"), &rejoin);
  EXPECT_FALSE(rejoin);
  EXPECT_EQ(p.rank, 3);
  EXPECT_EQ(&p, &e);
}

WorkerProfile Executor(const std::string& id, uint32_t users,
                       uint32_t first = 0) {
  WorkerProfile p = Profile(id);
  p.hosted_users = users;
  p.first_user = first;
  return p;
}

TEST(RegistryTest, AnExecutorEntersItsUsersWhoLiveAndDieWithIt) {
  Registry registry("fed", kTimeout);
  bool rejoin = false;
  Participant& x = registry.Open(Executor("x", 3, 10), &rejoin);
  EXPECT_THAT(registry.HostedBy("x"), ElementsAre("x/u10", "x/u11", "x/u12"));
  registry.Open(Profile("w"), &rejoin);
  // Selectable: the users and the worker, never the executor itself; it
  // is told of a shutdown, they are not (they make no calls).
  EXPECT_THAT(registry.Alive(), ElementsAre("w", "x/u10", "x/u11", "x/u12"));
  EXPECT_THAT(registry.AliveCallers(), ElementsAre("w", "x"));
  EXPECT_EQ(registry.AliveCounts().direct, 4);

  // A user's session is its executor's, suffixed; its owner the executor.
  const Participant* u = registry.FindSession(x.session_id + "#x/u11");
  ASSERT_NE(u, nullptr);
  EXPECT_EQ(u->profile.worker_id, "x/u11");
  EXPECT_EQ(u->profile.hosted_users, 0u);
  EXPECT_EQ(registry.Owner(*u), "x");
  EXPECT_EQ(registry.Owner(*registry.Find("w")), "w");
  // Not a user of that executor, or not under its session: unknown.
  EXPECT_EQ(registry.FindSession(x.session_id + "#x/u13"), nullptr);
  EXPECT_EQ(registry.FindSession(x.session_id + "#w"), nullptr);
  EXPECT_EQ(registry.FindSession("fed/x/0#x/u11"), nullptr);
  const std::string w_session = registry.Find("w")->session_id;
  EXPECT_EQ(registry.FindSession(w_session + "#x/u11"), nullptr);

  // The executor goes silent: its users are no longer alive.
  registry.Find("x")->last_seen = Clock::now() - std::chrono::minutes(5);
  EXPECT_THAT(registry.Alive(), ElementsAre("w"));
  registry.Find("x")->last_seen = Clock::now();
  EXPECT_EQ(registry.Alive().size(), 4u);
  // Closed (a revoked certificate): the same, and its user sessions go.
  const std::string old = x.session_id;
  EXPECT_TRUE(registry.Close("x"));
  EXPECT_THAT(registry.Alive(), ElementsAre("w"));
  EXPECT_EQ(registry.FindSession(old + "#x/u10"), nullptr);
}

TEST(RegistryTest, AnExecutorThatReRegistersWithFewerUsersDropsTheRest) {
  Registry registry("fed", kTimeout);
  bool rejoin = false;
  registry.Open(Executor("x", 3), &rejoin);
  registry.Find("x/u2")->rank = 4;  // kept across registrations
  Participant& x = registry.Open(Executor("x", 2, 1), &rejoin);
  EXPECT_TRUE(rejoin);
  EXPECT_THAT(registry.HostedBy("x"), ElementsAre("x/u1", "x/u2"));
  EXPECT_THAT(registry.Alive(), ElementsAre("x/u1", "x/u2"));
  EXPECT_EQ(registry.Find("x/u2")->rank, 4);
  EXPECT_EQ(registry.FindSession(x.session_id + "#x/u0"), nullptr);
  // As a plain worker again: no users at all.
  registry.Open(Profile("x"), &rejoin);
  EXPECT_THAT(registry.Alive(), ElementsAre("x"));
  EXPECT_THAT(registry.HostedBy("x"), ElementsAre());
}

}  // namespace
}  // namespace coordinator
}  // namespace fedpeft
