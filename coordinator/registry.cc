#include "coordinator/registry.h"

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
  if (it == sessions_.end()) return nullptr;
  return Find(it->second);
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
  return Seconds(now - p.last_seen) <= timeout_s_;
}

std::vector<std::string> Registry::Alive() const {
  std::vector<std::string> alive;
  auto now = Clock::now();
  for (const auto& kv : participants_) {
    if (IsAlive(kv.second, now)) alive.push_back(kv.first);
  }
  return alive;
}

Registry::Counts Registry::AliveCounts() const {
  Counts c;
  auto now = Clock::now();
  for (const auto& kv : participants_) {
    if (!IsAlive(kv.second, now)) continue;
    (kv.second.profile.edge ? c.edges : c.direct) += 1;
  }
  return c;
}

}  // namespace coordinator
}  // namespace fedpeft
