// The registry of participants: who registered (workers and edges), their
// sessions, when each was last heard from, and what the round engine keeps
// about each across rounds (rounds completed, assigned LoRA rank).
//
//   Register ─▶ Open(profile) ─▶ session id ─▶ every later call names it
//   Heartbeat / GetTask / SecAgg ─▶ Touch ─▶ alive while heard from within
//                                           federation.worker_timeout_s
//   revoked certificate ─▶ Close(id) ─▶ session gone, not alive
//
// Virtual users: an executor's registration (profile.hosted_users > 0)
// also enters each of its users, "<executor>/u<i>", as a participant with
// `host` set. A user has no session of its own: its calls name
// "<executor session>#<user id>", and it is alive exactly while its
// executor is. The executor itself trains nothing and is never selected.
//
// Thread-safety: none of its own. The round engine owns it and calls it
// under the engine's mutex only.
#ifndef FEDPEFT_COORDINATOR_REGISTRY_H_
#define FEDPEFT_COORDINATOR_REGISTRY_H_

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "coordinator/round_types.h"

namespace fedpeft {
namespace coordinator {

struct Participant {
  WorkerProfile profile;
  std::string session_id;  // empty: no open session
  Clock::time_point last_seen;
  uint64_t rounds_completed = 0;
  int64_t rank = 0;  // assigned LoRA rank (heterogeneous ranks); 0 = r
  std::string host;  // a virtual user: the executor hosting it
};

class Registry {
 public:
  // `federation_id` prefixes session ids; a participant is alive while heard
  // from within `timeout_s`.
  Registry(std::string federation_id, double timeout_s);

  // Opens a new session for profile.worker_id (closing the one it had) and
  // marks it heard from now. *rejoin says whether it had a session. For an
  // executor, its users are entered (or moved to it), and those it no
  // longer declares stop being alive.
  Participant& Open(const WorkerProfile& profile, bool* rejoin);
  // The participant of an open session, or the user a user session names;
  // nullptr when unknown.
  Participant* FindSession(const std::string& session_id);
  // Who answers for a participant's calls: its executor for a virtual
  // user, else itself.
  const std::string& Owner(const Participant& p) const {
    return p.host.empty() ? p.profile.worker_id : p.host;
  }
  // The users `executor` hosts, in index order (empty for others).
  const std::vector<std::string>& HostedBy(const std::string& executor) const;
  // The participant named `id`; nullptr when unknown.
  Participant* Find(const std::string& id);
  const Participant* Find(const std::string& id) const;
  // The entry of `id`, created (no session, not alive) when missing: how a
  // resumed coordinator restores assigned ranks before anyone registers.
  Participant& Entry(const std::string& id);
  // Closes the session of `id` and makes it not alive. False when it had no
  // open session.
  bool Close(const std::string& id);

  bool IsAlive(const Participant& p, Clock::time_point now) const;
  // Ids of the alive participants that can be selected (not executors),
  // sorted.
  std::vector<std::string> Alive() const;
  // Ids of the alive participants that call for themselves (executors
  // included, virtual users not): who must hear of a shutdown.
  std::vector<std::string> AliveCallers() const;
  // Alive participants that are edges, and that are not.
  struct Counts {
    int edges = 0;
    int direct = 0;
  };
  Counts AliveCounts() const;

  const std::map<std::string, Participant>& all() const {
    return participants_;
  }
  size_t size() const { return participants_.size(); }

 private:
  const std::string federation_id_;
  const double timeout_s_;
  std::map<std::string, Participant> participants_;         // by id
  std::map<std::string, std::string> sessions_;             // session -> id
  std::map<std::string, std::vector<std::string>> hosted_;  // executor ->
  uint64_t next_session_ = 1;
};

}  // namespace coordinator
}  // namespace fedpeft

#endif  // FEDPEFT_COORDINATOR_REGISTRY_H_
