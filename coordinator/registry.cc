#include "coordinator/registry.h"

#include <set>
#include <sstream>

namespace fedpeft {
namespace coordinator {

uint64_t UnixMillis() {
  return static_cast<uint64_t>(
      std::chrono::duration_cast<std::chrono::milliseconds>(
          std::chrono::system_clock::now().time_since_epoch())
          .count());
}

Registry::Registry(std::string federation_id, double timeout_s)
    : federation_id_(std::move(federation_id)), timeout_s_(timeout_s) {}

Participant& Registry::Open(const WorkerProfile& profile, bool* rejoin) {
  if (profile.hosted_users > 0 || hosted_.count(profile.worker_id)) {
    // Users it hosted before and no longer does stop being alive with it.
    std::vector<std::string>& users = hosted_[profile.worker_id];
    const std::vector<std::string> before = std::move(users);
    users.clear();  // a moved-from vector's state is unspecified
    users.reserve(profile.hosted_users);
    for (uint32_t i = 0; i < profile.hosted_users; ++i) {
      const std::string id =
          HostedUserId(profile.worker_id, profile.first_user + i);
      Participant& u = Entry(id);
      u.profile = profile;
      u.profile.worker_id = id;
      u.profile.hosted_users = 0;
      u.profile.first_user = 0;
      u.profile.num_samples = 0;  // the upload says
      u.host = profile.worker_id;
      if (!u.session_id.empty()) {  // a participant of that name: replaced
        sessions_.erase(u.session_id);
        u.session_id.clear();
      }
      users.push_back(id);
    }
    if (!before.empty()) {
      const std::set<std::string> now(users.begin(), users.end());
      for (const std::string& id : before) {
        Participant* u = Find(id);
        if (u && u->host == profile.worker_id && !now.count(id)) {
          // Not alive from now on: it has no session and its last_seen
          // is from before it was entered.
          u->host.clear();
        }
      }
    }
    if (users.empty()) hosted_.erase(profile.worker_id);
  }
  Participant& p = participants_[profile.worker_id];
  *rejoin = !p.session_id.empty();
  if (*rejoin) sessions_.erase(p.session_id);
  p.profile = profile;
  p.last_seen = Clock::now();
  std::ostringstream sid;
  sid << federation_id_ << "/" << profile.worker_id << "/" << std::hex
      << Mix(next_session_++ ^ UnixMillis());
  p.session_id = sid.str();
  sessions_[p.session_id] = profile.worker_id;
  return p;
}

Participant* Registry::FindSession(const std::string& session_id) {
  auto it = sessions_.find(session_id);
  if (it != sessions_.end()) return Find(it->second);
  // "<executor session>#<user id>": a user of that executor.
  const size_t hash = session_id.rfind('#');
  if (hash == std::string::npos) return nullptr;
  it = sessions_.find(session_id.substr(0, hash));
  if (it == sessions_.end()) return nullptr;
  Participant* user = Find(session_id.substr(hash + 1));
  if (!user || user->host != it->second) return nullptr;
  return user;
}

const std::vector<std::string>& Registry::HostedBy(
    const std::string& executor) const {
  static const std::vector<std::string> kNone;
  auto it = hosted_.find(executor);
  return it == hosted_.end() ? kNone : it->second;
}

Participant* Registry::Find(const std::string& id) {
  auto it = participants_.find(id);
  return it == participants_.end() ? nullptr : &it->second;
}

const Participant* Registry::Find(const std::string& id) const {
  auto it = participants_.find(id);
  return it == participants_.end() ? nullptr : &it->second;
}

Participant& Registry::Entry(const std::string& id) {
  auto [it, added] = participants_.try_emplace(id);
  if (added) {
    // Not alive until it registers (the clock's zero may be recent).
    it->second.last_seen =
        Clock::now() - std::chrono::duration_cast<Clock::duration>(
                           std::chrono::duration<double>(timeout_s_ + 1));
  }
  return it->second;
}

bool Registry::Close(const std::string& id) {
  Participant* p = Find(id);
  if (!p || p->session_id.empty()) return false;
  sessions_.erase(p->session_id);
  p->session_id.clear();
  // Not alive from now on: never selected again unless it registers anew.
  p->last_seen =
      Clock::now() - std::chrono::duration_cast<Clock::duration>(
                         std::chrono::duration<double>(timeout_s_ + 1));
  return true;
}

bool Registry::IsAlive(const Participant& p, Clock::time_point now) const {
  if (!p.host.empty()) {
    const Participant* host = Find(p.host);
    return host && !host->session_id.empty() && IsAlive(*host, now);
  }
  return Seconds(now - p.last_seen) <= timeout_s_;
}

std::vector<std::string> Registry::Alive() const {
  std::vector<std::string> alive;
  auto now = Clock::now();
  for (const auto& kv : participants_) {
    if (kv.second.profile.hosted_users > 0) continue;  // an executor
    if (IsAlive(kv.second, now)) alive.push_back(kv.first);
  }
  return alive;
}

std::vector<std::string> Registry::AliveCallers() const {
  std::vector<std::string> alive;
  auto now = Clock::now();
  for (const auto& kv : participants_) {
    if (!kv.second.host.empty()) continue;  // a virtual user
    if (IsAlive(kv.second, now)) alive.push_back(kv.first);
  }
  return alive;
}

Registry::Counts Registry::AliveCounts() const {
  Counts c;
  auto now = Clock::now();
  for (const auto& kv : participants_) {
    if (kv.second.profile.hosted_users > 0) continue;  // its users count
    if (!IsAlive(kv.second, now)) continue;
    (kv.second.profile.edge ? c.edges : c.direct) += 1;
  }
  return c;
}

}  // namespace coordinator
}  // namespace fedpeft
