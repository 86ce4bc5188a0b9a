// Tests of the transport layer over real gRPC: adapters streamed through an
// in-process server under a 4 MiB message limit (and refused as one message),
// the Status <-> grpc::Status table, retryability, Backoff, channel and
// address helpers. The codec itself is tested in codec_*_test.cc,
// tensor_stream_test.cc and tensor_decoder_test.cc.
#include <gmock/gmock.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <vector>

#include "proto/fedpeft.grpc.pb.h"
#include "proto/fedpeft.pb.h"
#include "proto/grpc_util.h"
#include "proto/tensor_codec.h"
#include "tests/proto/tensor_test_util.h"

namespace fedpeft {
namespace transport {
namespace {

using ::testing::HasSubstr;

constexpr size_t kMiB = size_t{1} << 20;

// ---- a real gRPC server ---------------------------------------------------

constexpr uint64_t kOneMessageRound = 999;

// DownloadAdapter streams `adapter`; UploadUpdate decodes what it is sent
// against the adapter's specs and keeps it. Round kOneMessageRound sends the
// whole adapter as one message instead, which the 4 MiB limit must refuse.
class TestFederation final : public proto::Federation::Service {
 public:
  TestFederation(TensorMap adapter, size_t chunk_bytes)
      : adapter_(std::move(adapter)), chunk_bytes_(chunk_bytes) {}

  grpc::Status DownloadAdapter(
      grpc::ServerContext* context, const proto::DownloadRequest* request,
      grpc::ServerWriter<proto::TensorChunk>* writer) override {
    if (request->round() == kOneMessageRound) {
      proto::TensorChunk all;
      for (const auto& [name, t] : adapter_) {
        all.mutable_data()->mutable_data()->append(
            static_cast<const char*>(t.data_ptr()),
            t.numel() * t.element_size());
      }
      if (!writer->Write(all)) {
        return grpc::Status(grpc::StatusCode::UNAVAILABLE, "write failed");
      }
      return grpc::Status::OK;
    }
    return ToGrpcStatus(EncodeTensors(
        adapter_, chunk_bytes_,
        [writer](const proto::TensorChunk& c) { return writer->Write(c); }));
  }

  grpc::Status UploadUpdate(grpc::ServerContext* context,
                            grpc::ServerReader<proto::UploadMessage>* reader,
                            proto::UploadReply* reply) override {
    proto::UploadMessage message;
    if (!reader->Read(&message) || !message.has_header()) {
      return ToGrpcStatus(Status::InvalidArgument(
          "upload: first message must be the UpdateHeader"));
    }
    DecoderLimits limits;
    limits.expected = SpecsOf(adapter_);
    TensorDecoder decoder(std::move(limits));
    while (reader->Read(&message)) {
      if (!message.has_chunk()) {
        return ToGrpcStatus(
            Status::InvalidArgument("upload: second UpdateHeader"));
      }
      Status s = decoder.Add(message.chunk());
      if (!s.ok()) return ToGrpcStatus(s.WithContext("upload"));
    }
    StatusOr<TensorMap> tensors = decoder.Finish();
    if (!tensors.ok()) {
      return ToGrpcStatus(tensors.status().WithContext("upload"));
    }
    std::lock_guard<std::mutex> lock(mu_);
    uploaded_ = std::move(tensors).value();
    reply->set_accepted(true);
    return grpc::Status::OK;
  }

  TensorMap TakeUploaded() {
    std::lock_guard<std::mutex> lock(mu_);
    return std::move(uploaded_);
  }

 private:
  const TensorMap adapter_;
  const size_t chunk_bytes_;
  std::mutex mu_;
  TensorMap uploaded_;  // guarded by mu_
};

// A 40 MB adapter: one 32 MiB F32 tensor (8 chunks), two BF16 tensors of
// 2 MiB and a 4 MiB F32 one, ten times the message limit in total.
TensorMap BigAdapter() {
  torch::manual_seed(42);
  TensorMap m;
  m["layers.0.lora_A.weight"] = torch::randn({8, 1 << 20});
  m["layers.0.lora_B.weight"] = torch::randn({1 << 20, 1}).to(torch::kBFloat16);
  m["layers.1.lora_A.weight"] = torch::randn({1, 1 << 20}).to(torch::kBFloat16);
  m["layers.1.lora_B.weight"] = torch::randn({1 << 20, 1});
  return m;
}

class GrpcTransportTest : public ::testing::Test {
 protected:
  static constexpr size_t kLimit = 4 * kMiB;

  void SetUp() override {
    adapter_ = BigAdapter();
    ASSERT_GT(EncodedBytes(adapter_), 10 * kLimit - kMiB);
    service_ = std::make_unique<TestFederation>(
        adapter_, ChunkBytesForMessageLimit(kLimit));
    StartServer(kLimit);
  }

  // (Re)starts the server on a new port with `server_limit` and connects a
  // client whose limit is kLimit.
  void StartServer(size_t server_limit) {
    if (server_) {
      server_->Shutdown();
      server_.reset();  // a service is registered with one server at a time
    }
    grpc::ServerBuilder builder;
    ServerBuilderDefaults(&builder, server_limit);
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(),
                             &port_);
    builder.RegisterService(service_.get());
    server_ = builder.BuildAndStart();
    ASSERT_NE(server_, nullptr);
    ASSERT_GT(port_, 0);
    ChannelOptions options;
    options.max_message_bytes = kLimit;
    StatusOr<std::shared_ptr<grpc::Channel>> channel =
        MakeChannel(JoinHostPort("127.0.0.1", port_), options);
    ASSERT_TRUE(channel.ok()) << channel.status().ToString();
    stub_ = proto::Federation::NewStub(*channel);
  }

  void TearDown() override {
    if (server_) server_->Shutdown();
  }

  // Downloads round `round` into `*out`; returns the call's status, or the
  // decoder's error (the call cancelled) as INVALID_ARGUMENT.
  grpc::Status Download(uint64_t round, TensorMap* out) {
    grpc::ClientContext context;
    SetTimeout(&context, std::chrono::seconds(60));
    proto::DownloadRequest request;
    request.set_round(round);
    std::unique_ptr<grpc::ClientReader<proto::TensorChunk>> reader =
        stub_->DownloadAdapter(&context, request);
    DecoderLimits limits;
    limits.expected = SpecsOf(adapter_);
    TensorDecoder decoder(std::move(limits));
    proto::TensorChunk chunk;
    Status decode_status;
    while (reader->Read(&chunk)) {
      EXPECT_LE(chunk.ByteSizeLong(), kLimit);
      decode_status = decoder.Add(chunk);
      if (!decode_status.ok()) {
        context.TryCancel();
        break;
      }
    }
    grpc::Status status = reader->Finish();
    if (!decode_status.ok()) return ToGrpcStatus(decode_status);
    if (!status.ok()) return status;
    StatusOr<TensorMap> tensors = decoder.Finish();
    if (!tensors.ok()) return ToGrpcStatus(tensors.status());
    *out = std::move(tensors).value();
    return status;
  }

  // Uploads `tensors` as an update; `one_message` packs all data in one
  // chunk instead of streaming.
  grpc::Status Upload(const TensorMap& tensors, bool one_message,
                      proto::UploadReply* reply) {
    grpc::ClientContext context;
    SetTimeout(&context, std::chrono::seconds(60));
    std::unique_ptr<grpc::ClientWriter<proto::UploadMessage>> writer =
        stub_->UploadUpdate(&context, reply);
    proto::UploadMessage message;
    message.mutable_header()->set_round(1);
    message.mutable_header()->set_num_tensors(tensors.size());
    bool ok = writer->Write(message);
    if (ok && one_message) {
      message.Clear();
      for (const auto& [name, t] : tensors) {
        message.mutable_chunk()->mutable_data()->mutable_data()->append(
            static_cast<const char*>(t.data_ptr()),
            t.numel() * t.element_size());
      }
      ok = writer->Write(message);
    } else if (ok) {
      Status s =
          EncodeTensors(tensors, ChunkBytesForMessageLimit(kLimit),
                        [&writer, &message](const proto::TensorChunk& c) {
                          *message.mutable_chunk() = c;
                          EXPECT_LE(message.ByteSizeLong(), kLimit);
                          return writer->Write(message);
                        });
      ok = s.ok();
    }
    if (ok) writer->WritesDone();
    return writer->Finish();
  }

  TensorMap adapter_;
  std::unique_ptr<TestFederation> service_;
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<proto::Federation::Stub> stub_;
  int port_ = 0;
};

TEST_F(GrpcTransportTest, BigAdapterStreamsUnderMessageLimit) {
  TensorMap got;
  grpc::Status status = Download(1, &got);
  ASSERT_TRUE(status.ok()) << status.error_message();
  ExpectSameTensors(got, adapter_);
}

TEST_F(GrpcTransportTest, BigAdapterAsOneMessageIsResourceExhausted) {
  TensorMap got;
  grpc::Status status = Download(kOneMessageRound, &got);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED)
      << status.error_message();
  EXPECT_THAT(status.error_message(),
              HasSubstr("Sent message larger than max"));
  EXPECT_TRUE(got.empty());
}

TEST_F(GrpcTransportTest, ReceiverEnforcesItsLimitToo) {
  // A server that would send 64 MiB messages: the client's 4 MiB receive
  // limit still refuses the one-message adapter.
  StartServer(64 * kMiB);
  TensorMap got;
  grpc::Status status = Download(kOneMessageRound, &got);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED)
      << status.error_message();
  EXPECT_THAT(status.error_message(),
              HasSubstr("Received message larger than max"));
  // Chunked streaming is unaffected.
  status = Download(1, &got);
  ASSERT_TRUE(status.ok()) << status.error_message();
  ExpectSameTensors(got, adapter_);
}

TEST_F(GrpcTransportTest, BigUpdateUploadsByClientStreaming) {
  proto::UploadReply reply;
  grpc::Status status = Upload(adapter_, /*one_message=*/false, &reply);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_TRUE(reply.accepted());
  ExpectSameTensors(service_->TakeUploaded(), adapter_);
}

TEST_F(GrpcTransportTest, BigUpdateAsOneMessageIsResourceExhausted) {
  proto::UploadReply reply;
  grpc::Status status = Upload(adapter_, /*one_message=*/true, &reply);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED)
      << status.error_message();
  EXPECT_THAT(status.error_message(),
              HasSubstr("Sent message larger than max"));
  EXPECT_FALSE(reply.accepted());
}

TEST_F(GrpcTransportTest, MalformedUploadIsRejectedWithReason) {
  TensorMap wrong{{"layers.0.lora_A.weight", torch::zeros({4, 4})}};
  proto::UploadReply reply;
  grpc::Status status = Upload(wrong, /*one_message=*/false, &reply);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(status.error_message(),
              HasSubstr("upload: tensor 'layers.0.lora_A.weight': shape "
                        "[4, 4], expected [8, 1048576]"));
  Status mapped = FromGrpcStatus(status, "UploadUpdate");
  EXPECT_EQ(mapped.code(), StatusCode::kInvalidArgument);
  EXPECT_THAT(mapped.message(), HasSubstr("UploadUpdate: upload: tensor"));
}

TEST_F(GrpcTransportTest, ClosedServerIsUnavailableAndRetryable) {
  server_->Shutdown();
  server_.reset();
  grpc::ClientContext context;
  SetTimeout(&context, std::chrono::seconds(10));
  proto::HeartbeatReply reply;
  grpc::Status status =
      stub_->Heartbeat(&context, proto::HeartbeatRequest(), &reply);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAVAILABLE)
      << status.error_message();
  EXPECT_TRUE(IsRetryable(status));
  EXPECT_EQ(FromGrpcStatus(status, "Heartbeat").code(),
            StatusCode::kUnavailable);
}

// ---- Status <-> grpc::Status ----------------------------------------------

TEST(GrpcStatusTest, EveryFedpeftCodeRoundTrips) {
  const std::vector<std::pair<Status, grpc::StatusCode>> cases = {
      {Status::InvalidArgument("m"), grpc::StatusCode::INVALID_ARGUMENT},
      {Status::NotFound("m"), grpc::StatusCode::NOT_FOUND},
      {Status::Corruption("m"), grpc::StatusCode::DATA_LOSS},
      {Status::Unimplemented("m"), grpc::StatusCode::UNIMPLEMENTED},
      {Status::FailedPrecondition("m"), grpc::StatusCode::FAILED_PRECONDITION},
      {Status::Unavailable("m"), grpc::StatusCode::UNAVAILABLE},
      {Status::DeadlineExceeded("m"), grpc::StatusCode::DEADLINE_EXCEEDED},
      {Status::Internal("m"), grpc::StatusCode::INTERNAL},
  };
  for (const auto& [status, grpc_code] : cases) {
    SCOPED_TRACE(status.ToString());
    grpc::Status g = ToGrpcStatus(status);
    EXPECT_EQ(g.error_code(), grpc_code);
    EXPECT_EQ(g.error_message(), "m");
    Status back = FromGrpcStatus(g, "Call to peer");
    EXPECT_EQ(back.code(), status.code());
    EXPECT_EQ(back.message(), "Call to peer: m");
  }
  EXPECT_TRUE(ToGrpcStatus(Status::Ok()).ok());
  EXPECT_TRUE(FromGrpcStatus(grpc::Status::OK, "ctx").ok());
  // The one lossy direction: a server's I/O error is INTERNAL to its caller.
  grpc::Status io = ToGrpcStatus(Status::IoError("disk full"));
  EXPECT_EQ(io.error_code(), grpc::StatusCode::INTERNAL);
  EXPECT_EQ(io.error_message(), "I/O error: disk full");
  EXPECT_EQ(FromGrpcStatus(io, "").code(), StatusCode::kInternal);
  EXPECT_EQ(FromGrpcStatus(io, "").message(), "I/O error: disk full");
}

TEST(GrpcStatusTest, GrpcOnlyCodesMapAndKeepTheirName) {
  const std::vector<std::pair<grpc::StatusCode, StatusCode>> cases = {
      {grpc::StatusCode::RESOURCE_EXHAUSTED, StatusCode::kInvalidArgument},
      {grpc::StatusCode::OUT_OF_RANGE, StatusCode::kInvalidArgument},
      {grpc::StatusCode::ALREADY_EXISTS, StatusCode::kFailedPrecondition},
      {grpc::StatusCode::ABORTED, StatusCode::kFailedPrecondition},
      {grpc::StatusCode::PERMISSION_DENIED, StatusCode::kFailedPrecondition},
      {grpc::StatusCode::UNAUTHENTICATED, StatusCode::kFailedPrecondition},
      {grpc::StatusCode::CANCELLED, StatusCode::kInternal},
      {grpc::StatusCode::UNKNOWN, StatusCode::kInternal},
  };
  for (const auto& [grpc_code, code] : cases) {
    Status s = FromGrpcStatus(grpc::Status(grpc_code, "why"), "Register");
    EXPECT_EQ(s.code(), code) << GrpcCodeName(grpc_code);
    EXPECT_EQ(s.message(),
              std::string("Register: ") + GrpcCodeName(grpc_code) + ": why");
  }
}

TEST(GrpcStatusTest, OnlyUnavailableIsRetryable) {
  EXPECT_TRUE(IsRetryable(grpc::Status(grpc::StatusCode::UNAVAILABLE, "")));
  EXPECT_FALSE(
      IsRetryable(grpc::Status(grpc::StatusCode::DEADLINE_EXCEEDED, "")));
  EXPECT_TRUE(IsRetryable(grpc::Status(grpc::StatusCode::DEADLINE_EXCEEDED, ""),
                          /*idempotent=*/true));
  for (grpc::StatusCode code :
       {grpc::StatusCode::OK, grpc::StatusCode::INVALID_ARGUMENT,
        grpc::StatusCode::RESOURCE_EXHAUSTED, grpc::StatusCode::INTERNAL,
        grpc::StatusCode::CANCELLED, grpc::StatusCode::NOT_FOUND}) {
    EXPECT_FALSE(IsRetryable(grpc::Status(code, ""), true))
        << GrpcCodeName(code);
  }
}

// ---- Backoff --------------------------------------------------------------

TEST(BackoffTest, GrowsAndCapsWithoutJitter) {
  BackoffOptions options;
  options.initial = std::chrono::milliseconds(100);
  options.max = std::chrono::milliseconds(1000);
  options.multiplier = 2.0;
  options.jitter = 0.0;
  options.seed = 1;
  Backoff backoff(options);
  std::vector<int64_t> got;
  for (int i = 0; i < 7; ++i) got.push_back(backoff.Next().count());
  EXPECT_THAT(got,
              ::testing::ElementsAre(100, 200, 400, 800, 1000, 1000, 1000));
  EXPECT_EQ(backoff.attempts(), 7);
  backoff.Reset();
  EXPECT_EQ(backoff.attempts(), 0);
  EXPECT_EQ(backoff.Next().count(), 100);
}

TEST(BackoffTest, JittersWithinBoundsAndNeverPastMax) {
  BackoffOptions options;
  options.initial = std::chrono::milliseconds(100);
  options.max = std::chrono::milliseconds(2000);
  options.multiplier = 2.0;
  options.jitter = 0.25;
  std::set<int64_t> firsts;
  for (uint64_t seed = 0; seed < 50; ++seed) {
    options.seed = seed;
    Backoff backoff(options);
    double base = 100;
    for (int i = 0; i < 12; ++i) {
      const int64_t d = backoff.Next().count();
      if (i == 0) firsts.insert(d);
      EXPECT_GE(d, static_cast<int64_t>(base * 0.75) - 1) << "attempt " << i;
      EXPECT_LE(d, std::min<int64_t>(2000, base * 1.25)) << "attempt " << i;
      base = std::min(base * 2, 2000.0);
    }
  }
  EXPECT_GT(firsts.size(), 10u) << "jitter should spread first delays";
  // Same seed, same delays.
  options.seed = 9;
  Backoff a(options), b(options);
  for (int i = 0; i < 5; ++i) EXPECT_EQ(a.Next(), b.Next());
}

TEST(BackoffTest, SurvivesManyAttempts) {
  BackoffOptions options;
  options.multiplier = 10.0;
  options.seed = 3;
  Backoff backoff(options);
  for (int i = 0; i < 10000; ++i) backoff.Next();
  EXPECT_LE(backoff.Next(), options.max);
  EXPECT_GE(backoff.Next(), options.max * 0.8 - std::chrono::milliseconds(1));
}

TEST(BackoffTest, ValidateNamesEveryBadField) {
  BackoffOptions options;
  EXPECT_TRUE(options.Validate().ok());
  options.initial = std::chrono::milliseconds(0);
  options.max = std::chrono::milliseconds(-1);
  options.multiplier = 0.5;
  options.jitter = 1.5;
  Status s = options.Validate();
  EXPECT_THAT(s.message(),
              HasSubstr("backoff.initial: must be >= 1 ms, got 0"));
  EXPECT_THAT(s.message(), HasSubstr("backoff.max: must be >= initial"));
  EXPECT_THAT(s.message(), HasSubstr("backoff.multiplier"));
  EXPECT_THAT(s.message(), HasSubstr("backoff.jitter: must be in [0, 1)"));
  Backoff clamped(options);  // clamped, still usable
  EXPECT_GE(clamped.Next().count(), 1);
}

// ---- addresses and channels -----------------------------------------------

TEST(AddressTest, SplitsAndJoinsHostPort) {
  StatusOr<HostPort> hp = SplitHostPort("127.0.0.1:7070");
  ASSERT_TRUE(hp.ok()) << hp.status().ToString();
  EXPECT_EQ(hp->host, "127.0.0.1");
  EXPECT_EQ(hp->port, 7070);
  hp = SplitHostPort("[::1]:0");
  ASSERT_TRUE(hp.ok()) << hp.status().ToString();
  EXPECT_EQ(hp->host, "::1");
  EXPECT_EQ(hp->port, 0);
  EXPECT_EQ(JoinHostPort("::1", 5), "[::1]:5");
  EXPECT_EQ(JoinHostPort("localhost", 5), "localhost:5");

  EXPECT_THAT(SplitHostPort("localhost").status().message(),
              HasSubstr("address 'localhost': expected host:port"));
  EXPECT_THAT(SplitHostPort("::1:80").status().message(),
              HasSubstr("IPv6 hosts need brackets"));
  EXPECT_THAT(SplitHostPort("host:70000").status().message(),
              HasSubstr("port '70000': expected a number 0..65535"));
  EXPECT_THAT(SplitHostPort(":80").status().message(), HasSubstr("empty host"));
  EXPECT_FALSE(ParsePort("-1").ok());
  EXPECT_FALSE(ParsePort("").ok());
  EXPECT_EQ(*ParsePort("65535"), 65535);
}

TEST(AddressTest, MakeChannelValidatesAddress) {
  EXPECT_THAT(MakeChannel("nohost").status().message(),
              HasSubstr("address 'nohost'"));
  EXPECT_THAT(MakeChannel("127.0.0.1:0").status().message(),
              HasSubstr("port 0 cannot be dialed"));
  EXPECT_TRUE(MakeChannel("dns:///localhost:7070").ok());
  EXPECT_TRUE(MakeChannel("unix:/tmp/fedpeft.sock").ok());
}

}  // namespace
}  // namespace transport
}  // namespace fedpeft
