// Tensor codec: what a LoRA update costs on the wire at each compression
// setting (compression.bits / block_size), how fast it encodes and decodes,
// and how much error the quantization adds.
//
//   fedpeft_bench_codec                       # both adapters, 5 repeats
//   fedpeft_bench_codec --adapters stories260K-r8 --repeats 9
//       --big-elements 0   (one line)
//
// For every setting (bits 32 and 16 raw; 8, 4 and 2 quantized with block
// sizes 64, 256 and 1024) it prints:
//   - stream bytes: the sum of TensorChunk::ByteSizeLong over the whole
//     stream (headers, data chunks, framing) with tensors by name and by
//     index (Schema), and the ratio F32-by-name / this (higher = smaller);
//   - encode and decode throughput in MB of F32 input per second (median of
//     `repeats` runs, each looping until >= 20 ms), next to std::memcpy of
//     the same bytes (median as well): EncodeTensors into a sink that only
//     sizes the chunks, TensorDecoder over the collected chunks;
//   - the relative RMS error ||decoded - x|| / ||x|| over the adapter, on
//     random-normal data (lora_A ~ N(0, 1), lora_B ~ N(0, 0.01^2)).
// Then one tensor of --big-elements elements (default 40M) through
// EncodeTensor / DecodeTensor alone, wall and CPU seconds.
// Chunks are ChunkBytesForMessageLimit(4 MiB), as the worker uploads them.
// Single-threaded (LibTorch intra-op threads = 1), like memcpy.
//
// Prints a Markdown table on stdout; progress goes to stderr.
#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <iostream>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "bench/bench_util.h"
#include "proto/tensor_codec.h"

namespace fedpeft {
namespace bench {
namespace {

using transport::CodecOptions;

// A LoRA adapter's shapes: lora_A [r, in], lora_B [out, r] on `modules`.
struct Adapter {
  std::string name;
  std::string description;
  int64_t layers;
  int64_t hidden;
  int64_t intermediate;
  int64_t kv_dim;  // k_proj / v_proj out (GQA)
  int64_t rank;
  std::vector<std::string> modules;
};

const std::vector<Adapter>& Adapters() {
  static const auto* adapters = new std::vector<Adapter>{
      // assets/stories260K: hidden 64, intermediate 172, 5 layers, 8 heads,
      // 4 kv heads (head dim 8: k/v out 32).
      {"stories260K-r8",
       "stories260K, r=8 on q,k,v,o,gate,up,down",
       5,
       64,
       172,
       32,
       8,
       {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
        "down_proj"}},
      {"llama7b-r16-qv",
       "Llama-2-7B, r=16 on q,v",
       32,
       4096,
       11008,
       4096,
       16,
       {"q_proj", "v_proj"}},
  };
  return *adapters;
}

// (in, out) of a module.
std::pair<int64_t, int64_t> InOut(const Adapter& a, const std::string& m) {
  if (m == "k_proj" || m == "v_proj") return {a.hidden, a.kv_dim};
  if (m == "gate_proj" || m == "up_proj") return {a.hidden, a.intermediate};
  if (m == "down_proj") return {a.intermediate, a.hidden};
  return {a.hidden, a.hidden};  // q_proj, o_proj
}

TensorMap RandomAdapter(const Adapter& a) {
  torch::manual_seed(0);
  TensorMap t;
  for (int64_t l = 0; l < a.layers; ++l) {
    for (const std::string& m : a.modules) {
      const bool mlp = m == "gate_proj" || m == "up_proj" || m == "down_proj";
      const std::string p = "base_model.model.model.layers." +
                            std::to_string(l) +
                            (mlp ? ".mlp." : ".self_attn.") + m;
      const auto [in, out] = InOut(a, m);
      t[p + ".lora_A.weight"] = torch::randn({a.rank, in});
      t[p + ".lora_B.weight"] = torch::randn({out, a.rank}) * 0.01;
    }
  }
  return t;
}

struct Args {
  std::vector<std::string> adapters = {"stories260K-r8", "llama7b-r16-qv"};
  int repeats = 5;
  int64_t big_elements = 40'000'000;  // 0 = skip the one-tensor section
};

void Usage() {
  std::cerr << "usage: fedpeft_bench_codec "
               "[--adapters stories260K-r8,llama7b-r16-qv] [--repeats 5] "
               "[--big-elements 40000000]\n";
}

bool ParseArgs(int argc, char** argv, Args* args) {
  for (int i = 1; i < argc; ++i) {
    const std::string flag = argv[i];
    if (flag == "--help" || flag == "-h" || i + 1 >= argc) return false;
    const std::string value = argv[++i];
    if (flag == "--adapters") {
      args->adapters = SplitCommas(value);
    } else if (flag == "--repeats" || flag == "--big-elements") {
      try {
        if (flag == "--repeats") {
          args->repeats = std::stoi(value);
        } else {
          args->big_elements = std::stoll(value);
        }
      } catch (const std::exception&) {
        std::cerr << flag << ": expected a number, got '" << value << "'\n";
        return false;
      }
    } else {
      std::cerr << "unknown flag " << flag << "\n";
      return false;
    }
  }
  return args->repeats >= 1;
}

// Median over `repeats` of the seconds one call of `f` takes; each repeat
// loops `f` until 20 ms have passed (small adapters take microseconds).
template <typename F>
double MedianSeconds(int repeats, F&& f) {
  f();  // warm-up
  std::vector<double> runs;
  for (int r = 0; r < repeats; ++r) runs.push_back(SecondsPerCall(f));
  return Median(runs);
}

void Check(const Status& s, const char* what) {
  if (!s.ok())
    throw std::runtime_error(std::string(what) + ": " + s.ToString());
}

struct Row {
  std::string setting;
  uint64_t bytes_by_name = 0;
  uint64_t bytes_by_index = 0;
  double encode_s = 0;
  double decode_s = 0;
  double rel_rms = 0;
};

int Run(const Args& args) {
  torch::set_num_threads(1);
  const size_t chunk_bytes = transport::ChunkBytesForMessageLimit(4 << 20);
  std::vector<std::pair<std::string, CodecOptions>> settings = {
      {"F32", {32, 256}}, {"F16", {16, 256}}};
  for (int bits : {8, 4, 2}) {
    for (int64_t block : {64, 256, 1024}) {
      settings.push_back(
          {std::to_string(bits) + "-bit / " + std::to_string(block),
           {bits, block}});
    }
  }

  for (const std::string& adapter_name : args.adapters) {
    const Adapter* adapter = nullptr;
    for (const Adapter& a : Adapters()) {
      if (a.name == adapter_name) adapter = &a;
    }
    if (!adapter) {
      std::cerr << "unknown adapter '" << adapter_name << "'\n";
      return 2;
    }
    const TensorMap x = RandomAdapter(*adapter);
    const transport::Schema schema = transport::Schema::OfKeys(x);
    int64_t numel = 0;
    for (const auto& [k, t] : x) numel += t.numel();
    const double input_bytes = 4.0 * numel;
    std::cerr << "== " << adapter->name << ": " << x.size() << " tensors, "
              << numel << " parameters (" << input_bytes / 1e6 << " MB F32), "
              << args.repeats << " repeats\n";

    // memcpy of the same bytes, tensor by tensor, into one buffer.
    std::vector<char> dst(static_cast<size_t>(input_bytes), 1);
    const double memcpy_s = MedianSeconds(args.repeats, [&] {
      size_t off = 0;
      for (const auto& [k, t] : x) {
        const size_t n = t.numel() * sizeof(float);
        std::memcpy(dst.data() + off, t.data_ptr<float>(), n);
        off += n;
      }
    });

    std::vector<Row> rows;
    for (const auto& [label, options] : settings) {
      std::cerr << "   " << label << "\n";
      Row row;
      row.setting = label;
      std::mt19937_64 rng(42);
      std::vector<proto::TensorChunk> chunks;
      auto collect = [&chunks](const proto::TensorChunk& c) {
        chunks.push_back(c);
        return true;
      };
      Check(transport::EncodeTensors(x, chunk_bytes, collect, options, &rng),
            "encode");
      for (const auto& c : chunks) row.bytes_by_name += c.ByteSizeLong();
      chunks.clear();
      Check(transport::EncodeTensors(x, chunk_bytes, collect, options, &rng,
                                     &schema),
            "encode by index");
      for (const auto& c : chunks) row.bytes_by_index += c.ByteSizeLong();

      uint64_t sink = 0;
      row.encode_s = MedianSeconds(args.repeats, [&] {
        Check(transport::EncodeTensors(
                  x, chunk_bytes,
                  [&sink](const proto::TensorChunk& c) {
                    sink += c.ByteSizeLong();
                    return true;
                  },
                  options, &rng, &schema),
              "encode");
      });
      transport::DecoderLimits limits;
      limits.expected = transport::SpecsOf(x);
      limits.output_dtype = torch::kFloat32;
      TensorMap decoded;
      row.decode_s = MedianSeconds(args.repeats, [&] {
        transport::TensorDecoder decoder(limits);
        for (const auto& c : chunks) Check(decoder.Add(c), "decode");
        StatusOr<TensorMap> got = decoder.Finish();
        Check(got.status(), "decode");
        decoded = std::move(got).value();
      });
      double err = 0, norm = 0;
      for (const auto& [k, t] : x) {
        err += (decoded.at(k) - t).pow(2).sum().item<double>();
        norm += t.pow(2).sum().item<double>();
      }
      row.rel_rms = std::sqrt(err / norm);
      rows.push_back(row);
    }

    const double f32 = static_cast<double>(rows[0].bytes_by_name);
    const double mb = input_bytes / 1e6;
    std::printf("\n### %s: %zu tensors, %lld parameters, %.3f MB F32\n\n",
                adapter->description.c_str(), x.size(),
                static_cast<long long>(numel), mb);
    std::printf(
        "| setting | bytes (names) | ratio | bytes (index) | ratio | "
        "encode MB/s | decode MB/s | memcpy MB/s | rel. RMS error |\n"
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for (const Row& r : rows) {
      std::printf(
          "| %s | %llu | %.2fx | %llu | %.2fx | %.0f | %.0f | %.0f | "
          "%.2e |\n",
          r.setting.c_str(), static_cast<unsigned long long>(r.bytes_by_name),
          f32 / r.bytes_by_name,
          static_cast<unsigned long long>(r.bytes_by_index),
          f32 / r.bytes_by_index, mb / r.encode_s, mb / r.decode_s,
          mb / memcpy_s, r.rel_rms);
    }
    std::printf(
        "\nratio = F32 stream by name / this stream; target: 4-bit "
        ">= 7x. Meets it:");
    bool any = false;
    for (const Row& r : rows) {
      if (r.setting.rfind("4-bit", 0) != 0) continue;
      if (f32 / r.bytes_by_name >= 7) {
        std::printf(" %s (names)", r.setting.c_str());
        any = true;
      }
      if (f32 / r.bytes_by_index >= 7) {
        std::printf(" %s (index)", r.setting.c_str());
        any = true;
      }
    }
    std::printf("%s\n", any ? "" : " none");
  }

  if (args.big_elements > 0) {
    // One large tensor through EncodeTensor alone, CPU time next to wall
    // time (the wall clock counts other processes sharing the core).
    std::cerr << "== one tensor of " << args.big_elements << " elements\n";
    torch::manual_seed(1);
    const torch::Tensor big = torch::randn({args.big_elements});
    std::printf(
        "\n### EncodeTensor / DecodeTensor of one tensor of %lld "
        "elements (%.0f MB F32), median of %d\n\n"
        "| setting | encode wall s | encode CPU s | decode wall s | "
        "decode CPU s |\n|---|---:|---:|---:|---:|\n",
        static_cast<long long>(args.big_elements), 4e-6 * args.big_elements,
        args.repeats);
    for (const CodecOptions options :
         {CodecOptions{8, 256}, CodecOptions{4, 256}, CodecOptions{2, 256}}) {
      std::mt19937_64 rng(7);
      std::vector<double> ew, ec, dw, dc;
      transport::WireTensor wire;
      for (int r = 0; r < args.repeats; ++r) {
        const auto w0 = std::chrono::steady_clock::now();
        const std::clock_t c0 = std::clock();
        StatusOr<transport::WireTensor> w =
            transport::EncodeTensor(big, options, &rng);
        const std::clock_t c1 = std::clock();
        const auto w1 = std::chrono::steady_clock::now();
        Check(w.status(), "encode");
        wire = std::move(w).value();
        StatusOr<torch::Tensor> d = transport::DecodeTensor(wire, "big");
        const std::clock_t c2 = std::clock();
        const auto w2 = std::chrono::steady_clock::now();
        Check(d.status(), "decode");
        ew.push_back(std::chrono::duration<double>(w1 - w0).count());
        dw.push_back(std::chrono::duration<double>(w2 - w1).count());
        ec.push_back(static_cast<double>(c1 - c0) / CLOCKS_PER_SEC);
        dc.push_back(static_cast<double>(c2 - c1) / CLOCKS_PER_SEC);
      }
      std::printf("| %d-bit / %lld | %.3f | %.3f | %.3f | %.3f |\n",
                  options.bits, static_cast<long long>(options.block_size),
                  Median(ew), Median(ec), Median(dw), Median(dc));
    }
  }
  return 0;
}

}  // namespace
}  // namespace bench
}  // namespace fedpeft

int main(int argc, char** argv) {
  namespace b = fedpeft::bench;
  return b::BenchMain<b::Args>(argc, argv, "fedpeft_bench_codec", b::ParseArgs,
                               b::Usage, b::Run);
}
