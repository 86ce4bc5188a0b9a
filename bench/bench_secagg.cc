// Secure aggregation: what the protocol of security/secagg.h costs in time
// and bytes, next to the plain sum it replaces, measured in one run.
//
//   fedpeft_bench_secagg                   # n = 3, 10, 30 x both lengths
//   fedpeft_bench_secagg --quick           # n = 3, L = 24001 only (smoke)
//   fedpeft_bench_secagg --clients 10 --lengths 24001 --repeats 9
//
// Every cell (n clients, L words per vector) runs whole in-process sessions
// — Client::Create, Advertise, ShareKeys, MaskedInput, Unmask against one
// Server — with every small message through Serialize()/Parse() as on the
// wire, twice per repeat: with 0 dropouts and with the most the default
// threshold t tolerates (n - t, the highest ids, dropped after key
// agreement: they shared keys but send no masked input, so the server must
// rebuild their masking keys and strip the pair masks they left). Each
// session's sum is checked against the plain sum over its survivors.
// Timed, wall clock:
//   - client setup: Advertise + serializing it, then parsing the broadcast
//     U1 + ShareKeys + serializing it (two X25519 key pairs, Shamir sharing
//     of two secrets, n-1 X25519 agreements and AES-GCM encryptions); the
//     mean over the clients;
//   - client mask: MaskedInput alone (n-1 agreements and AES-GCM
//     decryptions of the routed shares, n-1 pair-mask agreements, n PRG
//     streams of L words); the mean over the survivors;
//   - server route: CloseShareKeys;
//   - server unmask: CloseMaskedInput + Finish (Shamir reconstruction, one
//     PRG stream per survivor's self mask and one per survivor x dropped
//     pair); ReceiveUnmask, which only checks and stores 71-byte shares, is
//     left out;
//   - plain sum: sum[i] += x_k[i] over the n vectors (the loop an
//     aggregator without secure aggregation runs), and std::memcpy of the
//     same n x L x 4 bytes into one L-word buffer, for scale.
// Reported: medians over repeats after one untimed warm-up repeat; a cell
// whose warm-up says it would exceed --cell-budget seconds gets fewer
// repeats (at least 3), and the table says so.
// Bytes: the serialized size of every message of the protocol, and the
// per-client upload: MaskedInputMsg (4 bytes/word + 26) against the same
// L values as F32 and as 4-bit quantized (block 256) payloads
// (transport::EncodedPayloadBytes; the per-tensor stream headers are the
// same for every codec and left out).
// Single-threaded throughout, like the protocol's Client and Server.
//
// Prints Markdown tables on stdout; progress goes to stderr.
#include <openssl/crypto.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <iostream>
#include <memory>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "bench/bench_util.h"
#include "proto/tensor_codec.h"
#include "security/secagg.h"
#include "security/secagg_crypto.h"
#include "security/secagg_messages.h"

namespace fedpeft {
namespace bench {
namespace {

using secagg::AdvertiseBroadcast;
using secagg::AdvertiseMsg;
using secagg::Client;
using secagg::MaskedInputMsg;
using secagg::RoutedShares;
using secagg::Server;
using secagg::ShareKeysMsg;
using secagg::UnmaskMsg;
using secagg::UnmaskRequest;
using Clock = std::chrono::steady_clock;

struct Args {
  std::vector<uint32_t> clients = {3, 10, 30};
  // stories260K, r=8 FFA-LoRA (B only) on all 7 projections, plus the
  // unclipped word: the shipped DP configuration. And a 7B-scale r=8 q,v
  // B-only adapter (32 layers x (4096 + 4096) x 8 = 2^22) plus that word.
  std::vector<uint64_t> lengths = {24001, 4194305};
  int repeats = 7;
  double cell_budget_s = 900;
};

void Usage() {
  std::cerr << "usage: fedpeft_bench_secagg [--quick] [--clients 3,10,30] "
               "[--lengths 24001,4194305] [--repeats 7] "
               "[--cell-budget 900]\n"
               "  --quick        only n = 3, L = 24001 (a smoke run)\n"
               "  --cell-budget  seconds one cell may take; a cell whose "
               "warm-up says it would take longer gets fewer repeats "
               "(at least 3)\n";
}

bool ParseArgs(int argc, char** argv, Args* args) {
  for (int i = 1; i < argc; ++i) {
    const std::string flag = argv[i];
    if (flag == "--quick") {
      args->clients = {3};
      args->lengths = {24001};
      continue;
    }
    if (flag == "--help" || flag == "-h" || i + 1 >= argc) return false;
    const std::string value = argv[++i];
    try {
      if (flag == "--clients") {
        args->clients.clear();
        for (const auto& c : SplitCommas(value)) {
          args->clients.push_back(static_cast<uint32_t>(std::stoul(c)));
        }
      } else if (flag == "--lengths") {
        args->lengths.clear();
        for (const auto& l : SplitCommas(value)) {
          args->lengths.push_back(std::stoull(l));
        }
      } else if (flag == "--repeats") {
        args->repeats = std::stoi(value);
      } else if (flag == "--cell-budget") {
        args->cell_budget_s = std::stod(value);
      } else {
        std::cerr << "unknown flag " << flag << "\n";
        return false;
      }
    } catch (const std::exception&) {
      std::cerr << flag << ": expected a number, got '" << value << "'\n";
      return false;
    }
  }
  for (uint32_t n : args->clients) {
    if (n < 2 || n >= secagg::kMaxClients) {
      std::cerr << "--clients: each must be in [2, " << secagg::kMaxClients
                << "), got " << n << "\n";
      return false;
    }
  }
  for (uint64_t l : args->lengths) {
    if (l < 1 || l > secagg::kMaxVectorLength) {
      std::cerr << "--lengths: each must be in [1, " << secagg::kMaxVectorLength
                << "], got " << l << "\n";
      return false;
    }
  }
  return !args->clients.empty() && !args->lengths.empty() &&
         args->repeats >= 1 && args->cell_budget_s > 0;
}

void Check(const Status& s, const char* what) {
  if (!s.ok()) {
    throw std::runtime_error(std::string(what) + ": " + s.ToString());
  }
}

template <typename T>
T Take(StatusOr<T> v, const char* what) {
  Check(v.status(), what);
  return std::move(v).value();
}

// A message as its receiver gets it: serialized, then parsed. `bytes`
// receives the serialized size.
template <typename M>
M Wire(const M& m, size_t* bytes = nullptr) {
  const std::vector<uint8_t> serialized = m.Serialize();
  if (bytes) *bytes = serialized.size();
  return Take(secagg::FromBytes<M>(serialized), "parse");
}

double SecondsSince(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

// One session's timings (seconds) and message sizes (bytes).
struct Session {
  double client_setup = 0;  // mean over clients
  double client_mask = 0;   // mean over survivors
  double server_route = 0;
  double server_unmask = 0;
  size_t advertise = 0;       // per client, up
  size_t broadcast = 0;       // per client, down
  size_t share_keys = 0;      // per client, up
  size_t routed = 0;          // per client, down
  size_t masked_input = 0;    // per client, up
  size_t unmask_request = 0;  // per client, down
  size_t unmask = 0;          // per client, up
};

// Runs one whole session over `inputs` (n vectors of L words) in which the
// clients with id >= n - dropped share keys but send no masked input, and
// checks the sum. `measure_masked_bytes` serializes one MaskedInputMsg (an
// L-word copy) to size it.
Session RunSession(const std::vector<std::vector<uint32_t>>& inputs,
                   uint32_t dropped, uint64_t session_id,
                   bool measure_masked_bytes) {
  const uint32_t n = static_cast<uint32_t>(inputs.size());
  const uint64_t length = inputs[0].size();
  secagg::Params params;
  params.num_clients = n;
  params.vector_length = length;
  params.session_id = session_id;
  const uint32_t survivors = n - dropped;
  Session out;

  std::unique_ptr<Server> server = Take(Server::Create(params), "server");
  std::vector<std::unique_ptr<Client>> clients;
  for (uint32_t id = 0; id < n; ++id) {
    clients.push_back(Take(Client::Create(id, params), "client"));
  }

  // Round 0 and 1: key setup, timed per client (including its serializing
  // and parsing); the server's side of it is not timed.
  std::vector<double> setup(n, 0);
  for (uint32_t id = 0; id < n; ++id) {
    const auto start = Clock::now();
    const AdvertiseMsg adv = Take(clients[id]->Advertise(), "Advertise");
    const std::vector<uint8_t> bytes = adv.Serialize();
    setup[id] += SecondsSince(start);
    out.advertise = bytes.size();
    Check(server->ReceiveAdvertise(
              Take(secagg::FromBytes<AdvertiseMsg>(bytes), "parse")),
          "ReceiveAdvertise");
  }
  const std::vector<uint8_t> u1 =
      Take(server->CloseAdvertise(), "CloseAdvertise").Serialize();
  out.broadcast = u1.size();
  for (uint32_t id = 0; id < n; ++id) {
    const auto start = Clock::now();
    const AdvertiseBroadcast broadcast =
        Take(secagg::FromBytes<AdvertiseBroadcast>(u1), "parse");
    const std::vector<uint8_t> bytes =
        Take(clients[id]->ShareKeys(broadcast), "ShareKeys").Serialize();
    setup[id] += SecondsSince(start);
    out.share_keys = bytes.size();
    Check(server->ReceiveShareKeys(
              Take(secagg::FromBytes<ShareKeysMsg>(bytes), "parse")),
          "ReceiveShareKeys");
  }
  for (double s : setup) out.client_setup += s / n;

  auto start = Clock::now();
  std::vector<RoutedShares> routed =
      Take(server->CloseShareKeys(), "CloseShareKeys");
  out.server_route = SecondsSince(start);

  // Round 2: the survivors mask; the masked vector goes to the server
  // without a serialize/parse copy (its size is measured once).
  for (const RoutedShares& r : routed) {
    const RoutedShares received = Wire(r, &out.routed);
    if (r.recipient >= survivors) continue;
    start = Clock::now();
    const MaskedInputMsg masked =
        Take(clients[r.recipient]->MaskedInput(inputs[r.recipient], received),
             "MaskedInput");
    out.client_mask += SecondsSince(start) / survivors;
    if (measure_masked_bytes && out.masked_input == 0) {
      out.masked_input = masked.Serialize().size();
    }
    Check(server->ReceiveMaskedInput(masked), "ReceiveMaskedInput");
  }

  // Round 3.
  start = Clock::now();
  const UnmaskRequest request =
      Take(server->CloseMaskedInput(), "CloseMaskedInput");
  out.server_unmask = SecondsSince(start);
  const UnmaskRequest received = Wire(request, &out.unmask_request);
  for (uint32_t u : request.survivors) {
    const UnmaskMsg answer = Take(clients[u]->Unmask(received), "Unmask");
    Check(server->ReceiveUnmask(Wire(answer, &out.unmask)), "ReceiveUnmask");
  }
  start = Clock::now();
  const std::vector<uint32_t> sum = Take(server->Finish(), "Finish");
  out.server_unmask += SecondsSince(start);

  std::vector<uint32_t> expected(length, 0);
  for (uint32_t u = 0; u < survivors; ++u) {
    for (uint64_t i = 0; i < length; ++i) expected[i] += inputs[u][i];
  }
  if (request.survivors.size() != survivors || sum != expected) {
    throw std::runtime_error("the unmasked sum differs from the plain sum (n " +
                             std::to_string(n) + ", dropped " +
                             std::to_string(dropped) + ")");
  }
  return out;
}

bool SameSetupBytes(const Session& a, const Session& b) {
  return a.advertise == b.advertise && a.broadcast == b.broadcast &&
         a.share_keys == b.share_keys && a.routed == b.routed &&
         a.unmask_request == b.unmask_request && a.unmask == b.unmask;
}

struct TimeRow {
  uint64_t length = 0;
  uint32_t n = 0;
  uint32_t threshold = 0;
  uint32_t dropped = 0;
  double client_setup = 0, client_mask = 0, server_route = 0, server_unmask = 0,
         plain_sum = 0, memcpy_s = 0;
  int repeats = 0;
  bool capped = false;
};

struct BytesRow {
  uint32_t n = 0;
  uint32_t threshold = 0;
  uint32_t dropped = 0;
  Session sizes;
};

struct UploadRow {
  uint64_t length = 0;
  size_t masked_input = 0;
  uint64_t f32 = 0;
  uint64_t q4 = 0;
  double prg_s = 0;  // one PRG stream of `length` words
};

std::string Ms(double seconds) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), seconds < 0.01 ? "%.3f" : "%.1f",
                seconds * 1e3);
  return buf;
}

// 2.4, 12, 1915: one decimal below 10.
std::string Ratio(double r) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), r < 10 ? "%.1f" : "%.0f", r);
  return buf;
}

int Run(const Args& args) {
  const std::string machine = MachineSummary();
  std::vector<TimeRow> time_rows;
  std::vector<BytesRow> bytes_rows;
  std::vector<UploadRow> upload_rows;
  uint64_t session_id = 0x5ec0a66be4c40000ull;

  for (uint64_t length : args.lengths) {
    UploadRow up;
    up.length = length;
    up.f32 =
        transport::EncodedPayloadBytes(static_cast<int64_t>(length), {32, 256});
    up.q4 =
        transport::EncodedPayloadBytes(static_cast<int64_t>(length), {4, 256});
    {
      secagg::SecretBytes seed(secagg::kKeyBytes);
      Check(secagg::SystemRandom().Fill(seed.data(), seed.size()), "seed");
      std::vector<uint32_t> words(length, 0);
      std::vector<double> runs;
      for (int r = 0; r <= args.repeats; ++r) {
        const double s = SecondsPerCall([&] {
          Check(secagg::PrgAccumulate(seed, 1, words.data(), length), "PRG");
        });
        if (r > 0) runs.push_back(s);  // r = 0: warm-up
      }
      up.prg_s = Median(runs);
    }

    for (uint32_t n : args.clients) {
      const uint32_t t = secagg::DefaultThreshold(n);
      std::cerr << "== n " << n << " (t " << t << "), L " << length << " ("
                << n * length * 4 / 1e6 << " MB of inputs)\n";
      std::mt19937_64 rng(n * 1000003ull + length);
      std::vector<std::vector<uint32_t>> inputs(n);
      for (auto& x : inputs) {
        x.resize(length);
        for (uint32_t& w : x) w = static_cast<uint32_t>(rng());
      }
      std::vector<uint32_t> sum(length, 1);
      std::vector<uint32_t> copy(length, 1);
      auto plain_sum = [&] {
        std::fill(sum.begin(), sum.end(), 0u);
        for (const auto& x : inputs) {
          const uint32_t* in = x.data();
          uint32_t* acc = sum.data();
          for (uint64_t i = 0; i < length; ++i) acc[i] += in[i];
        }
      };
      auto copy_all = [&] {
        for (const auto& x : inputs) {
          std::memcpy(copy.data(), x.data(), length * sizeof(uint32_t));
        }
      };
      const uint32_t drops[2] = {0, n - t};

      // One repeat: the baselines, then a session with each dropout count.
      struct Sample {
        double plain_sum, memcpy_s;
        Session sessions[2];
      };
      auto repeat = [&](bool measure_bytes) {
        Sample s;
        s.plain_sum = SecondsPerCall(plain_sum);
        s.memcpy_s = SecondsPerCall(copy_all);
        for (int d = 0; d < 2; ++d) {
          s.sessions[d] = RunSession(inputs, drops[d], ++session_id,
                                     measure_bytes && d == 0);
        }
        return s;
      };

      const auto warm_start = Clock::now();
      const Sample warm = repeat(/*measure_bytes=*/true);
      const double warm_s = SecondsSince(warm_start);
      int repeats = args.repeats;
      bool capped = false;
      if (warm_s * repeats > args.cell_budget_s) {
        repeats = std::max(
            3, static_cast<int>(std::floor(args.cell_budget_s / warm_s)));
        capped = repeats < args.repeats;
      }
      std::cerr << "   warm-up " << warm_s << " s; " << repeats << " repeats"
                << (capped ? " (capped by --cell-budget)" : "") << "\n";
      if (up.masked_input == 0) up.masked_input = warm.sessions[0].masked_input;

      std::vector<Sample> samples;
      for (int r = 0; r < repeats; ++r) {
        samples.push_back(repeat(/*measure_bytes=*/false));
        const Sample& s = samples.back();
        std::cerr << "   repeat " << r + 1 << "/" << repeats << ": plain sum "
                  << Ms(s.plain_sum) << " ms, unmask "
                  << Ms(s.sessions[0].server_unmask) << " / "
                  << Ms(s.sessions[1].server_unmask) << " ms, mask "
                  << Ms(s.sessions[0].client_mask) << " ms\n";
      }
      volatile uint32_t sink = sum[0] + copy[0];
      (void)sink;

      std::vector<double> plain, mem;
      for (const Sample& s : samples) {
        plain.push_back(s.plain_sum);
        mem.push_back(s.memcpy_s);
      }
      for (int d = 0; d < 2; ++d) {
        std::vector<double> setup, mask, route, unmask;
        for (const Sample& s : samples) {
          setup.push_back(s.sessions[d].client_setup);
          mask.push_back(s.sessions[d].client_mask);
          route.push_back(s.sessions[d].server_route);
          unmask.push_back(s.sessions[d].server_unmask);
        }
        TimeRow row;
        row.length = length;
        row.n = n;
        row.threshold = t;
        row.dropped = drops[d];
        row.client_setup = Median(setup);
        row.client_mask = Median(mask);
        row.server_route = Median(route);
        row.server_unmask = Median(unmask);
        row.plain_sum = Median(plain);
        row.memcpy_s = Median(mem);
        row.repeats = repeats;
        row.capped = capped;
        time_rows.push_back(row);
        // Sizes depend on n (and, in principle, the dropouts), not on L.
        const Session& sizes = warm.sessions[d];
        const bool same_as_no_dropouts =
            d == 1 && SameSetupBytes(sizes, warm.sessions[0]);
        if (length == args.lengths.front() && !same_as_no_dropouts) {
          bytes_rows.push_back({n, t, drops[d], sizes});
        }
      }
    }
    upload_rows.push_back(up);
  }

  std::printf(
      "## Secure aggregation cost (security/secagg.h)\n\n"
      "Machine: %s at the start; %s. Single-threaded. Times are medians over "
      "repeats "
      "(after one untimed warm-up) of whole in-process sessions with "
      "fresh keys; t = DefaultThreshold(n) = n - floor(n/3); dropped = "
      "clients that shared keys but sent no masked input (the highest "
      "ids). client setup = Advertise + ShareKeys with their messages' "
      "(de)serialization, mean per client; client mask = MaskedInput, mean "
      "per client; server route = CloseShareKeys; server unmask = "
      "CloseMaskedInput + Finish; plain sum = sum[i] += x_k[i] over all n "
      "vectors of L uint32; memcpy = n x L x 4 bytes.\n\n",
      machine.c_str(), OpenSSL_version(OPENSSL_VERSION));
  std::printf("Load average at the end of the run: %s.\n\n",
              LoadAverage().c_str());
  std::printf(
      "| L words | n | t | dropped | client setup ms | client mask ms | "
      "server route ms | server unmask ms | plain sum ms | memcpy ms | "
      "unmask / plain sum | repeats |\n"
      "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
  bool any_capped = false;
  for (const TimeRow& r : time_rows) {
    any_capped |= r.capped;
    std::printf(
        "| %llu | %u | %u | %u | %s | %s | %s | %s | %s | %s | %sx | "
        "%d%s |\n",
        static_cast<unsigned long long>(r.length), r.n, r.threshold, r.dropped,
        Ms(r.client_setup).c_str(), Ms(r.client_mask).c_str(),
        Ms(r.server_route).c_str(), Ms(r.server_unmask).c_str(),
        Ms(r.plain_sum).c_str(), Ms(r.memcpy_s).c_str(),
        Ratio(r.server_unmask / r.plain_sum).c_str(), r.repeats,
        r.capped ? "*" : "");
  }
  if (any_capped) {
    std::printf(
        "\n\\* repeats capped: the cell's warm-up times --repeats %d would "
        "exceed --cell-budget %.0f s.\n",
        args.repeats, args.cell_budget_s);
  }

  std::printf(
      "\n### Upload per client\n\n"
      "masked = MaskedInputMsg serialized (4 bytes/word + 26 framing); F32 "
      "and 4-bit/256 = transport::EncodedPayloadBytes of the same L values "
      "(4-bit: 8 bytes per block of 256 + L/2). PRG = one AES-256-CTR mask "
      "stream of L words (PrgAccumulate), the unit of masking and "
      "unmasking work.\n\n"
      "| L words | masked bytes | F32 bytes | 4-bit/256 bytes | masked / "
      "F32 | masked / 4-bit | PRG ms | PRG GB/s |\n"
      "|---:|---:|---:|---:|---:|---:|---:|---:|\n");
  for (const UploadRow& u : upload_rows) {
    std::printf("| %llu | %zu | %llu | %llu | %.3f | %.2fx | %s | %.2f |\n",
                static_cast<unsigned long long>(u.length), u.masked_input,
                static_cast<unsigned long long>(u.f32),
                static_cast<unsigned long long>(u.q4),
                static_cast<double>(u.masked_input) / u.f32,
                static_cast<double>(u.masked_input) / u.q4, Ms(u.prg_s).c_str(),
                4.0 * u.length / u.prg_s / 1e9);
  }

  std::printf(
      "\n### Protocol messages per client (bytes, serialized)\n\n"
      "up = client to server, down = server to client; independent of L. "
      "setup total = every message but the masked input. A row with "
      "dropouts appears only where a size differs from the row without "
      "(the request lists U2 either way, and every client answers with "
      "one share per client of U2).\n\n"
      "| n | t | dropped | Advertise up | AdvertiseBroadcast down | "
      "ShareKeys up | RoutedShares down | UnmaskRequest down | Unmask up | "
      "setup total |\n"
      "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
  for (const BytesRow& b : bytes_rows) {
    const Session& s = b.sizes;
    const size_t total = s.advertise + s.broadcast + s.share_keys + s.routed +
                         s.unmask_request + s.unmask;
    std::printf("| %u | %u | %u | %zu | %zu | %zu | %zu | %zu | %zu | %zu |\n",
                b.n, b.threshold, b.dropped, s.advertise, s.broadcast,
                s.share_keys, s.routed, s.unmask_request, s.unmask, total);
  }
  return 0;
}

}  // namespace
}  // namespace bench
}  // namespace fedpeft

int main(int argc, char** argv) {
  namespace b = fedpeft::bench;
  return b::BenchMain<b::Args>(argc, argv, "fedpeft_bench_secagg", b::ParseArgs,
                               b::Usage, b::Run);
}
