#include "worker/distributed.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <thread>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>

#include "common/file_util.h"
#include "common/logging.h"

#ifdef FEDPEFT_WITH_NCCL
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif

namespace fedpeft {
namespace worker {
namespace {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

// Keys of the command channel, beside (not under) the process group's.
const char kCommandKey[] = "fedpeft/command/";
const char kTakenKey[] = "fedpeft/taken/";

struct HostPort {
  std::string host;  // without IPv6 brackets
  int port = -1;
};

// "host:port" or "[v6]:port"; port -1 when malformed.
HostPort SplitAddress(const std::string& address) {
  HostPort hp;
  size_t colon = address.rfind(':');
  if (colon == std::string::npos || colon == 0) return hp;
  hp.host = address.substr(0, colon);
  if (hp.host.front() == '[' && hp.host.back() == ']') {
    hp.host = hp.host.substr(1, hp.host.size() - 2);
  } else if (hp.host.find(':') != std::string::npos) {
    return HostPort{};  // an IPv6 host needs brackets
  }
  const std::string port = address.substr(colon + 1);
  if (hp.host.empty() || port.empty() || port.size() > 5 ||
      port.find_first_not_of("0123456789") != std::string::npos) {
    return HostPort{};
  }
  int value = std::stoi(port);
  if (value <= 65535) hp.port = value;
  return hp;
}

// c10::Error's what() carries a C++ backtrace; the message is enough.
std::string ErrorText(const std::exception& e) {
  if (const auto* c10 = dynamic_cast<const c10::Error*>(&e)) {
    return c10->what_without_backtrace();
  }
  return e.what();
}

// The address of this machine on the route to `host`: what the Gloo device
// binds, so a rank on another machine can reach it. (Resolving the
// hostname, Gloo's default, gives 127.0.1.1 on a stock Debian.) A UDP
// connect() sends nothing; it only picks the route.
StatusOr<std::string> LocalAddressToward(const std::string& host) {
  addrinfo hints{};
  hints.ai_socktype = SOCK_DGRAM;
  addrinfo* found = nullptr;
  if (getaddrinfo(host.c_str(), "9", &hints, &found) != 0 || !found) {
    return Status::InvalidArgument(
        "worker.distributed.master_address: cannot resolve host '" + host +
        "'");
  }
  std::string local;
  int fd = ::socket(found->ai_family, SOCK_DGRAM, 0);
  if (fd >= 0 && ::connect(fd, found->ai_addr, found->ai_addrlen) == 0) {
    sockaddr_storage addr{};
    socklen_t len = sizeof(addr);
    char text[INET6_ADDRSTRLEN] = {0};
    if (::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) == 0) {
      const void* raw =
          addr.ss_family == AF_INET6
              ? static_cast<const void*>(
                    &reinterpret_cast<sockaddr_in6*>(&addr)->sin6_addr)
              : static_cast<const void*>(
                    &reinterpret_cast<sockaddr_in*>(&addr)->sin_addr);
      if (inet_ntop(addr.ss_family, raw, text, sizeof(text))) local = text;
    }
  }
  if (fd >= 0) ::close(fd);
  freeaddrinfo(found);
  if (local.empty()) {
    return Status::Unavailable(
        "worker.distributed.master_address: no route from this machine to '" +
        host + "'");
  }
  return local;
}

}  // namespace

void DistributedOptions::Read(ConfigReader& in) {
  in.Get("world_size", &world_size);
  in.Get("rank", &rank);
  in.Get("master_address", &master_address);
  in.Get("timeout_s", &timeout_s);
  in.Get("port_file", &port_file);
  in.Check(world_size >= 1, "world_size",
           "must be >= 1 (1 = one process), got " + ToConfigString(world_size));
  in.Check(rank >= 0 && rank < std::max(1, world_size), "rank",
           "must be in [0, world_size) = [0, " +
               ToConfigString(std::max(1, world_size)) + "), got " +
               ToConfigString(rank));
  const HostPort hp = SplitAddress(master_address);
  in.Check(hp.port >= 0, "master_address",
           "expected HOST:PORT (rank 0's store, e.g. 10.0.0.1:29500), got '" +
               master_address + "'");
  in.Check(hp.port != 0 || rank == 0, "master_address",
           "port 0 (any free port) is for rank 0 only; rank " +
               ToConfigString(rank) +
               " needs the port rank 0 listens on, got '" + master_address +
               "'");
  in.Check(timeout_s > 0, "timeout_s",
           "must be > 0, got " + ToConfigString(timeout_s));
}

class DistributedGroup::Impl {
 public:
  explicit Impl(const torch::Device& d) : device(d) {}
  const torch::Device device;  // where the collectives' buffers live
  c10::intrusive_ptr<c10d::TCPStore> store;
  c10::intrusive_ptr<c10d::ProcessGroup> group;
};

namespace {

// The one place the device picks the backend.
StatusOr<c10::intrusive_ptr<c10d::ProcessGroup>> ProcessGroupBackend(
    const c10::intrusive_ptr<c10d::Store>& store,
    const DistributedOptions& options, const std::string& host,
    const torch::Device& device) {
  const milliseconds timeout(static_cast<int64_t>(options.timeout_s * 1000));
  if (device.is_cuda()) {
#ifdef FEDPEFT_WITH_NCCL
    // NCCL enforces the timeout only in blocking-wait mode, read from the
    // environment when the group is made. (Never built here: see
    // docs/design.md, "A worker over several processes".)
    ::setenv("NCCL_BLOCKING_WAIT", "1", /*overwrite=*/0);
    auto nccl = c10d::ProcessGroupNCCL::Options::create();
    nccl->timeout = timeout;
    return c10::intrusive_ptr<c10d::ProcessGroup>(
        c10::make_intrusive<c10d::ProcessGroupNCCL>(store, options.rank,
                                                    options.world_size, nccl));
#else
    return Status::Unimplemented(
        "worker.distributed with model.device '" + device.str() +
        "': this build has no NCCL (Debian's LibTorch is CPU-only); build "
        "against a CUDA LibTorch with -DFEDPEFT_WITH_NCCL=ON, or train on "
        "cpu (Gloo)");
#endif
  }
  // GLOO_SOCKET_IFNAME, as in PyTorch, names the interface outright.
  const char* ifname = std::getenv("GLOO_SOCKET_IFNAME");
  auto gloo = c10d::ProcessGroupGloo::Options::create(timeout);
  gloo->threads = 1;  // our collectives are issued one at a time
  if (ifname && *ifname) {
    gloo->devices.push_back(
        c10d::ProcessGroupGloo::createDeviceForInterface(ifname));
  } else {
    ASSIGN_OR_RETURN(std::string local, LocalAddressToward(host));
    gloo->devices.push_back(
        c10d::ProcessGroupGloo::createDeviceForHostname(local));
  }
  return c10::intrusive_ptr<c10d::ProcessGroup>(
      c10::make_intrusive<c10d::ProcessGroupGloo>(store, options.rank,
                                                  options.world_size, gloo));
}

}  // namespace

StatusOr<std::unique_ptr<DistributedGroup>> DistributedGroup::Join(
    const DistributedOptions& options, const torch::Device& device) {
  const std::string subject = "worker.distributed rank " +
                              std::to_string(options.rank) + " of " +
                              std::to_string(options.world_size) + " (master " +
                              options.master_address + ")";
  const HostPort hp = SplitAddress(options.master_address);
  if (!options.enabled() || hp.port < 0) {
    return Status::InvalidArgument(subject + ": not a distributed config");
  }
  auto impl = std::make_unique<Impl>(device);
  const milliseconds timeout(static_cast<int64_t>(options.timeout_s * 1000));
  // The store first: on rank 0 its constructor listens and returns at once
  // (waitWorkers off); elsewhere it retries connecting until the timeout.
  try {
    c10d::TCPStoreOptions so;
    so.port = static_cast<uint16_t>(hp.port);
    so.isServer = options.rank == 0;
    so.waitWorkers = false;
    so.timeout = timeout;
    impl->store = c10::make_intrusive<c10d::TCPStore>(hp.host, so);
  } catch (const std::exception& e) {
    return Status::Unavailable(
        subject + ": " +
        (options.rank == 0 ? "cannot listen for the other ranks (port in "
                             "use, or not an address of this host?): "
                           : "cannot reach rank 0's store (is rank 0 "
                             "running?): ") +
        ErrorText(e));
  }
  const int port = impl->store->getPort();
  if (options.rank == 0 && !options.port_file.empty()) {
    RETURN_IF_ERROR(
        WriteFileAtomic(options.port_file, std::to_string(port) + "\n"));
  }
  FP_LOG_INFO(
      "distributed", "rank {} of {}: joining through {}:{} (timeout {:.0f}s)",
      options.rank, options.world_size, hp.host, port, options.timeout_s);
  auto prefixed = c10::make_intrusive<c10d::PrefixStore>("pg/", impl->store);
  try {
    ASSIGN_OR_RETURN(impl->group,
                     ProcessGroupBackend(prefixed, options, hp.host, device));
  } catch (const std::exception& e) {
    return Status::Unavailable(
        subject + ": the ranks did not all join within " +
        fmt::format("{:g}", options.timeout_s) + " s: " + ErrorText(e));
  }
  FP_LOG_INFO("distributed", "rank {} of {}: group of {} ({}) joined",
              options.rank, options.world_size, options.world_size,
              impl->group->getBackendName());
  return std::unique_ptr<DistributedGroup>(
      new DistributedGroup(options, port, std::move(impl)));
}

DistributedGroup::DistributedGroup(const DistributedOptions& options, int port,
                                   std::unique_ptr<Impl> impl)
    : options_(options), port_(port), impl_(std::move(impl)) {}

DistributedGroup::~DistributedGroup() = default;

Status DistributedGroup::Guard(const std::string& what,
                               const std::function<void()>& op) {
  if (!broken_.ok()) return broken_;
  try {
    op();
    return Status::Ok();
  } catch (const std::exception& e) {
    broken_ = Status::Unavailable(
        "worker.distributed rank " + std::to_string(rank()) + " of " +
        std::to_string(world_size()) + ": " + what + " failed (a rank died, " +
        "or did not answer within timeout_s " +
        fmt::format("{:g}", options_.timeout_s) + " s): " + ErrorText(e));
    return broken_;
  }
}

StatusOr<double> DistributedGroup::AllReduceWeightedMean(
    std::vector<torch::Tensor>& tensors, double weight) {
  torch::NoGradGuard no_grad;
  // One float64 buffer: [w*t_1, ..., w*t_n, w]. A rank without weight sends
  // zeros, so a NaN in its (unused) tensors cannot leak into the sum.
  std::vector<torch::Tensor> parts;
  const auto f64 =
      torch::TensorOptions().dtype(torch::kFloat64).device(impl_->device);
  for (const torch::Tensor& t : tensors) {
    torch::Tensor flat = t.detach().reshape({-1}).to(f64);
    parts.push_back(weight > 0 ? flat * weight : torch::zeros_like(flat));
  }
  parts.push_back(torch::full({1}, weight > 0 ? weight : 0.0, f64));
  std::vector<torch::Tensor> buffer{torch::cat(parts)};
  RETURN_IF_ERROR(Guard("all-reduce of a training step",
                        [&] { impl_->group->allreduce(buffer)->wait(); }));
  const double total = buffer[0][-1].item<double>();
  int64_t offset = 0;
  for (torch::Tensor& t : tensors) {
    const int64_t n = t.numel();
    torch::Tensor mean = total > 0 ? buffer[0].narrow(0, offset, n) / total
                                   : torch::zeros({n}, f64);
    t.detach().copy_(mean.view(t.sizes()));
    offset += n;
  }
  return total;
}

StatusOr<std::vector<int64_t>> DistributedGroup::AllReduceSum(
    std::vector<int64_t> values) {
  std::vector<torch::Tensor> buffer{
      torch::tensor(values, torch::kInt64).to(impl_->device)};
  RETURN_IF_ERROR(
      Guard("all-reduce", [&] { impl_->group->allreduce(buffer)->wait(); }));
  torch::Tensor sums = buffer[0].cpu();
  for (size_t i = 0; i < values.size(); ++i) {
    values[i] = sums[static_cast<int64_t>(i)].item<int64_t>();
  }
  return values;
}

Status DistributedGroup::ExpectSame(uint64_t value, const std::string& what) {
  // Four 16-bit words, so that world_size times a word fits an int64.
  std::vector<int64_t> words;
  for (int i = 0; i < 4; ++i) words.push_back((value >> (16 * i)) & 0xffff);
  ASSIGN_OR_RETURN(std::vector<int64_t> sums, AllReduceSum(words));
  for (int i = 0; i < 4; ++i) {
    if (sums[i] != words[i] * world_size()) {
      broken_ = Status::FailedPrecondition(
          "worker.distributed: the ranks' " + what +
          " differ (seen from rank " + std::to_string(rank()) +
          "); every rank needs the same model files, data and config");
      return broken_;
    }
  }
  return Status::Ok();
}

Status DistributedGroup::Broadcast(std::vector<torch::Tensor>& tensors,
                                   int root) {
  torch::NoGradGuard no_grad;
  if (tensors.empty()) return Status::Ok();
  std::vector<torch::Tensor> flat;
  for (const torch::Tensor& t : tensors) {
    if (t.scalar_type() != tensors[0].scalar_type()) {
      return Status::InvalidArgument(
          "worker.distributed broadcast: tensors of different dtypes (" +
          std::string(c10::toString(tensors[0].scalar_type())) + ", " +
          c10::toString(t.scalar_type()) + "); expected one");
    }
    flat.push_back(t.detach().reshape({-1}).to(impl_->device));
  }
  std::vector<torch::Tensor> buffer{torch::cat(flat)};
  c10d::BroadcastOptions opts;
  opts.rootRank = root;
  RETURN_IF_ERROR(Guard("broadcast from rank " + std::to_string(root), [&] {
    impl_->group->broadcast(buffer, opts)->wait();
  }));
  int64_t offset = 0;
  for (torch::Tensor& t : tensors) {
    t.detach().copy_(buffer[0].narrow(0, offset, t.numel()).view(t.sizes()));
    offset += t.numel();
  }
  return Status::Ok();
}

Status DistributedGroup::Post(const std::string& bytes) {
  const int64_t seq = next_command_;
  Status s = Guard("posting command " + std::to_string(seq), [&] {
    impl_->store->set(kCommandKey + std::to_string(seq),
                      std::vector<uint8_t>(bytes.begin(), bytes.end()));
    if (seq > 0) impl_->store->deleteKey(kCommandKey + std::to_string(seq - 1));
  });
  if (s.ok()) ++next_command_;
  return s;
}

StatusOr<std::optional<std::string>> DistributedGroup::NextCommand(
    const std::function<bool()>& stop) {
  // Polled rather than store->wait(): a wait that times out leaves its
  // answer queued on the connection, where the next call would read it.
  const std::string key = kCommandKey + std::to_string(next_command_);
  std::optional<std::string> command;
  while (!stop || !stop()) {
    bool ready = false;
    RETURN_IF_ERROR(Guard("waiting for rank 0's next command",
                          [&] { ready = impl_->store->check({key}); }));
    if (ready) {
      RETURN_IF_ERROR(Guard("reading rank 0's command", [&] {
        std::vector<uint8_t> bytes = impl_->store->get(key);
        command.emplace(bytes.begin(), bytes.end());
        impl_->store->add(kTakenKey + std::to_string(next_command_), 1);
      }));
      ++next_command_;
      return command;
    }
    std::this_thread::sleep_for(milliseconds(50));
  }
  return command;
}

Status DistributedGroup::WaitCommandTaken() {
  if (next_command_ == 0) return Status::Ok();
  const std::string key = kTakenKey + std::to_string(next_command_ - 1);
  const auto until =
      Clock::now() +
      milliseconds(static_cast<int64_t>(options_.timeout_s * 1000));
  while (true) {
    int64_t taken = 0;
    RETURN_IF_ERROR(Guard("waiting for the ranks to take the last command",
                          [&] { taken = impl_->store->add(key, 0); }));
    if (taken >= world_size() - 1) return Status::Ok();
    if (Clock::now() >= until) {
      return Status::DeadlineExceeded(
          "worker.distributed: " + std::to_string(world_size() - 1 - taken) +
          " rank(s) did not take rank 0's last command within timeout_s");
    }
    std::this_thread::sleep_for(milliseconds(50));
  }
}

}  // namespace worker
}  // namespace fedpeft
