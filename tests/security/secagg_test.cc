// Tests of the secure aggregation protocol (security/secagg.h) and its wire
// format (security/secagg_messages.h): the unmasked sum equals the plain sum
// exactly with 0, 1 and the most tolerated dropouts, before and after
// masking; too many dropouts are an error, not a wrong sum; the server's view
// of one masked input looks uniform and uncorrelated with the input; clients
// refuse unsafe unmask requests; Parse() rejects malformed bytes. Every
// message travels through Serialize()/Parse() on its way.
#include "security/secagg.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "security/secagg_crypto.h"
#include "security/secagg_fixed_point.h"
#include "security/secagg_messages.h"
#include "security/secagg_update.h"
#include "tests/security/seeded_random.h"

namespace fedpeft {
namespace secagg {
namespace {

// The message as the receiver gets it: serialized and parsed again.
template <typename M>
M Wire(const M& m) {
  StatusOr<M> parsed = FromBytes<M>(m.Serialize());
  EXPECT_TRUE(parsed.ok()) << parsed.status().ToString();
  return parsed.ok() ? *parsed : M{};
}

bool Contains(const Status& s, const std::string& text) {
  return s.message().find(text) != std::string::npos;
}

// Who drops out where. A client in `drop_in_share_keys` advertised, then
// never delivered its ShareKeys message (not in U2); `drop_before_masking`
// shared keys but sent no masked input (U2 \ U3); `drop_after_masking` sent
// its masked input but never answers the unmask request.
struct Scenario {
  uint32_t n = 3;
  uint32_t threshold = 0;  // default
  uint64_t length = 64;
  uint64_t seed = 1;
  std::set<uint32_t> no_advertise;
  std::set<uint32_t> drop_in_share_keys;
  std::set<uint32_t> drop_before_masking;
  std::set<uint32_t> drop_after_masking;
  std::map<uint32_t, std::vector<uint32_t>> fixed_inputs;  // else random
  std::function<void(RoutedShares*)> tamper_routed;
  std::function<void(UnmaskMsg*)> tamper_unmask;
};

struct Outcome {
  Status status;  // the first failure, OK when the sum came back
  std::vector<uint32_t> sum;
  std::vector<uint32_t> expected;  // plain sum over the survivors U3
  std::vector<uint32_t> survivors;
  std::map<uint32_t, std::vector<uint32_t>> inputs;
  std::map<uint32_t, std::vector<uint32_t>> masked;  // the server's view
};

Outcome RunSession(const Scenario& sc) {
  Outcome out;
  Params params;
  params.num_clients = sc.n;
  params.threshold = sc.threshold;
  params.vector_length = sc.length;
  params.session_id = 0x5ec0a6600000000ull + sc.seed;
  auto fail = [&out](const Status& s) {
    out.status = s;
    return out;
  };
  StatusOr<std::unique_ptr<Server>> server = Server::Create(params);
  if (!server.ok()) return fail(server.status());
  std::vector<std::unique_ptr<SeededRandom>> rngs;
  std::vector<std::unique_ptr<Client>> clients;
  std::mt19937_64 input_rng(sc.seed);
  for (uint32_t id = 0; id < sc.n; ++id) {
    rngs.push_back(std::make_unique<SeededRandom>(sc.seed * 1000 + id));
    StatusOr<std::unique_ptr<Client>> c =
        Client::Create(id, params, rngs.back().get());
    if (!c.ok()) return fail(c.status());
    clients.push_back(std::move(*c));
    auto fixed = sc.fixed_inputs.find(id);
    if (fixed != sc.fixed_inputs.end()) {
      out.inputs[id] = fixed->second;
    } else {
      std::vector<uint32_t>& x = out.inputs[id];
      for (uint64_t i = 0; i < sc.length; ++i) {
        x.push_back(static_cast<uint32_t>(input_rng()));
      }
    }
  }

  // Round 0: AdvertiseKeys.
  for (uint32_t id = 0; id < sc.n; ++id) {
    if (sc.no_advertise.count(id)) continue;
    StatusOr<AdvertiseMsg> adv = clients[id]->Advertise();
    if (!adv.ok()) return fail(adv.status());
    Status s = (*server)->ReceiveAdvertise(Wire(*adv));
    if (!s.ok()) return fail(s);
  }
  StatusOr<AdvertiseBroadcast> u1 = (*server)->CloseAdvertise();
  if (!u1.ok()) return fail(u1.status());

  // Round 1: ShareKeys.
  for (const AdvertiseMsg& a : u1->clients) {
    StatusOr<ShareKeysMsg> sk = clients[a.sender]->ShareKeys(Wire(*u1));
    if (!sk.ok()) return fail(sk.status());
    if (sc.drop_in_share_keys.count(a.sender)) continue;
    Status s = (*server)->ReceiveShareKeys(Wire(*sk));
    if (!s.ok()) return fail(s);
  }
  StatusOr<std::vector<RoutedShares>> routed = (*server)->CloseShareKeys();
  if (!routed.ok()) return fail(routed.status());

  // Round 2: MaskedInputCollection.
  for (RoutedShares& r : *routed) {
    if (sc.drop_before_masking.count(r.recipient)) continue;
    if (sc.tamper_routed) sc.tamper_routed(&r);
    StatusOr<MaskedInputMsg> m =
        clients[r.recipient]->MaskedInput(out.inputs[r.recipient], Wire(r));
    if (!m.ok()) return fail(m.status());
    out.masked[r.recipient] = m->masked;
    Status s = (*server)->ReceiveMaskedInput(Wire(*m));
    if (!s.ok()) return fail(s);
  }
  StatusOr<UnmaskRequest> request = (*server)->CloseMaskedInput();
  if (!request.ok()) return fail(request.status());
  out.survivors = request->survivors;
  out.expected.assign(sc.length, 0);
  for (uint32_t u : request->survivors) {
    for (uint64_t i = 0; i < sc.length; ++i)
      out.expected[i] += out.inputs[u][i];
  }

  // Round 3: Unmasking.
  for (uint32_t u : request->survivors) {
    if (sc.drop_after_masking.count(u)) continue;
    StatusOr<UnmaskMsg> um = clients[u]->Unmask(Wire(*request));
    if (!um.ok()) return fail(um.status());
    if (sc.tamper_unmask) sc.tamper_unmask(&*um);
    Status s = (*server)->ReceiveUnmask(Wire(*um));
    if (!s.ok()) return fail(s);
  }
  StatusOr<std::vector<uint32_t>> sum = (*server)->Finish();
  if (!sum.ok()) return fail(sum.status());
  out.sum = *sum;
  return out;
}

std::vector<uint32_t> Ids(std::initializer_list<uint32_t> ids) { return ids; }

void ExpectExactSum(const Scenario& sc, size_t expected_survivors) {
  Outcome out = RunSession(sc);
  ASSERT_TRUE(out.status.ok()) << out.status.ToString();
  EXPECT_EQ(out.survivors.size(), expected_survivors);
  ASSERT_EQ(out.sum.size(), sc.length);
  EXPECT_EQ(out.sum, out.expected);
  for (uint32_t d : sc.drop_before_masking) {
    EXPECT_EQ(std::count(out.survivors.begin(), out.survivors.end(), d), 0);
  }
}

// ---- Exact sums -------------------------------------------------------------

TEST(SecAggTest, SumIsExactWithoutDropouts) {
  for (uint32_t n : {2u, 3u, 10u}) {
    SCOPED_TRACE("n = " + std::to_string(n));
    Scenario sc;
    sc.n = n;
    sc.seed = n;
    ExpectExactSum(sc, n);
  }
}

TEST(SecAggTest, SumIsExactWithOneDropout) {
  Scenario sc;  // n = 3, t = 2: one dropout tolerated
  sc.drop_before_masking = {2};
  ExpectExactSum(sc, 2);
  sc = Scenario();
  sc.drop_after_masking = {0};  // in U3: its input is in the sum
  ExpectExactSum(sc, 3);
  sc = Scenario();
  sc.drop_in_share_keys = {1};
  ExpectExactSum(sc, 2);
  sc = Scenario();
  sc.n = 10;
  sc.drop_before_masking = {4};
  ExpectExactSum(sc, 9);
  sc.drop_before_masking = {};
  sc.drop_after_masking = {7};
  ExpectExactSum(sc, 10);
}

TEST(SecAggTest, SumIsExactWithTheMostToleratedDropouts) {
  // n = 10: t = 10 - 3 = 7, so three may drop out, wherever they do.
  ASSERT_EQ(DefaultThreshold(10), 7u);
  ASSERT_EQ(DefaultThreshold(3), 2u);
  Scenario sc;
  sc.n = 10;
  sc.length = 1000;
  sc.drop_before_masking = {1, 2, 3};
  ExpectExactSum(sc, 7);
  sc.drop_before_masking = {};
  sc.drop_after_masking = {0, 5, 9};
  ExpectExactSum(sc, 10);
  sc.drop_after_masking = {};
  sc.no_advertise = {9};
  sc.drop_in_share_keys = {3};
  sc.drop_before_masking = {5};
  ExpectExactSum(sc, 7);
  sc.no_advertise = {};
  sc.drop_in_share_keys = {1};
  sc.drop_before_masking = {2};
  sc.drop_after_masking = {8};
  ExpectExactSum(sc, 8);
  // n = 3 at its limit of one.
  Scenario small;
  small.drop_after_masking = {2};
  ExpectExactSum(small, 3);
}

TEST(SecAggTest, ExplicitThresholdToleratesMoreDropouts) {
  Scenario sc;
  sc.n = 10;
  sc.threshold = 6;
  sc.drop_before_masking = {0, 1};
  sc.drop_after_masking = {8, 9};
  ExpectExactSum(sc, 8);
}

// ---- Too many dropouts
// --------------------------------------------------------

TEST(SecAggTest, TooManyDropoutsIsAnErrorNotAWrongSum) {
  struct Case {
    const char* name;
    std::set<uint32_t> none, share_keys, before, after;
  };
  const std::vector<Case> cases = {
      {"4 never advertise", {1, 2, 3, 4}, {}, {}, {}},
      {"4 drop in ShareKeys", {}, {1, 2, 3, 4}, {}, {}},
      {"4 drop before masking", {}, {}, {1, 2, 3, 4}, {}},
      {"4 drop after masking", {}, {}, {}, {1, 2, 3, 4}},
      {"2 before, 2 after", {}, {}, {0, 9}, {3, 4}},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    Scenario sc;
    sc.n = 10;
    sc.no_advertise = c.none;
    sc.drop_in_share_keys = c.share_keys;
    sc.drop_before_masking = c.before;
    sc.drop_after_masking = c.after;
    Outcome out = RunSession(sc);
    ASSERT_FALSE(out.status.ok());
    EXPECT_EQ(out.status.code(), StatusCode::kFailedPrecondition);
    EXPECT_TRUE(Contains(out.status, "too many dropouts"))
        << out.status.ToString();
    EXPECT_TRUE(Contains(out.status, "need t = 7")) << out.status.ToString();
    EXPECT_TRUE(out.sum.empty());
  }
  Scenario small;  // n = 3, t = 2
  small.drop_after_masking = {0, 1};
  Outcome out = RunSession(small);
  EXPECT_EQ(out.status.code(), StatusCode::kFailedPrecondition)
      << out.status.ToString();
}

// An adapter update as words and back: the masked tensors exclude frozen
// ones and FFA's lora_A, left-out tensors count as zeros, and the sum of
// several encodings decodes to the sum of the updates (within one unit an
// element per update) with the unclipped bits counted.
TEST(SecAggUpdateTest, WordsOfUpdatesSumToTheSumOfUpdates) {
  TensorMap adapter;
  adapter["m.0.lora_A.weight"] = torch::zeros({2, 3});
  adapter["m.0.lora_B.weight"] = torch::zeros({3, 2});
  adapter["m.1.lora_A.weight"] = torch::zeros({2, 3});
  adapter["m.1.lora_B.weight"] = torch::zeros({3, 2});
  const std::vector<std::string> names =
      MaskedTensorNames(adapter, {"m.1.lora_B.weight"}, /*ffa=*/true);
  ASSERT_EQ(names, std::vector<std::string>{"m.0.lora_B.weight"});
  const std::vector<std::string> all = MaskedTensorNames(adapter, {}, false);
  ASSERT_EQ(all.size(), 4u);
  auto length = MaskedVectorLength(adapter, all);
  ASSERT_TRUE(length.ok());
  EXPECT_EQ(*length, 4u * 6 + 1);

  const double clip = 1.0;
  const uint32_t n = 3;
  auto scale = ChooseFixedPointScale(clip, n);
  ASSERT_TRUE(scale.ok());
  std::mt19937_64 rng(5);
  torch::manual_seed(3);
  std::vector<uint32_t> sum(*length, 0);
  TensorMap want;  // in double: the reference must not round
  for (const auto& name : all) {
    want[name] = torch::zeros(adapter.at(name).sizes(), torch::kFloat64);
  }
  for (uint32_t u = 0; u < n; ++u) {
    TensorMap update;
    // Worker u leaves out m.1.lora_A (not trained): zeros.
    for (const auto& name : all) {
      if (name == "m.1.lora_A.weight") continue;
      update[name] = 0.2 * torch::rand(adapter.at(name).sizes()) - 0.1;
      want[name] += update[name].to(torch::kFloat64);
    }
    auto words = EncodeUpdateWords(update, adapter, all, *scale,
                                   /*unclipped=*/u != 1, rng);
    ASSERT_TRUE(words.ok()) << words.status().ToString();
    ASSERT_EQ(words->size(), *length);
    for (size_t i = 0; i < sum.size(); ++i) sum[i] += (*words)[i];
  }
  uint32_t unclipped = 0;
  auto decoded = DecodeSumWords(sum, adapter, all, *scale, &unclipped);
  ASSERT_TRUE(decoded.ok()) << decoded.status().ToString();
  EXPECT_EQ(unclipped, 2u);
  for (const auto& name : all) {
    // Under one unit per update, plus the float32 rounding of the decoded
    // sum (|sum| < 0.5: half an ulp is 2^-26).
    EXPECT_LE((decoded->at(name).to(torch::kFloat64) - want.at(name))
                  .abs()
                  .max()
                  .item<double>(),
              n * *scale + std::ldexp(1.0, -26))
        << name;
  }

  // What the layout cannot hold is refused, named.
  TensorMap stray;
  stray["m.9.lora_B.weight"] = torch::zeros({3, 2});
  EXPECT_FALSE(EncodeUpdateWords(stray, adapter, all, *scale, true, rng).ok());
  TensorMap wrong;
  wrong["m.0.lora_B.weight"] = torch::zeros({2, 2});
  EXPECT_FALSE(EncodeUpdateWords(wrong, adapter, all, *scale, true, rng).ok());
  TensorMap huge;
  huge["m.0.lora_B.weight"] = torch::full({3, 2}, 1e30);
  EXPECT_FALSE(EncodeUpdateWords(huge, adapter, all, *scale, true, rng).ok());
  EXPECT_FALSE(DecodeSumWords({1, 2}, adapter, all, *scale, &unclipped).ok());
}

TEST(SecAggTest, ParamsValidation) {
  Params p;
  p.num_clients = 10;
  p.vector_length = 5;
  EXPECT_TRUE(p.Validate().ok());
  EXPECT_EQ(p.Threshold(), 7u);
  p.threshold = 5;  // not a majority
  Status s = p.Validate();
  EXPECT_FALSE(s.ok());
  EXPECT_TRUE(Contains(s, "secagg.threshold")) << s.ToString();
  p.threshold = 11;
  EXPECT_FALSE(p.Validate().ok());
  p.threshold = 0;
  p.num_clients = 1;
  EXPECT_FALSE(p.Validate().ok());
  p.num_clients = 3;
  p.vector_length = 0;
  s = p.Validate();
  EXPECT_TRUE(Contains(s, "secagg.vector_length")) << s.ToString();
  p.vector_length = 4;
  EXPECT_FALSE(Client::Create(3, p).ok());  // id >= n
  EXPECT_TRUE(Client::Create(2, p).ok());
}

// ---- Refusals and rejections
// --------------------------------------------------

// Runs an n = 3 session up to the unmask request, with client 2 dropped
// before masking.
struct HalfSession {
  Params params;
  std::vector<std::unique_ptr<SeededRandom>> rngs;
  std::vector<std::unique_ptr<Client>> clients;
  std::unique_ptr<Server> server;
  UnmaskRequest request;
  std::vector<RoutedShares> routed;

  void Start() {
    params.num_clients = 3;
    params.vector_length = 8;
    params.session_id = 42;
    server = Server::Create(params).value();
    for (uint32_t id = 0; id < 3; ++id) {
      rngs.push_back(std::make_unique<SeededRandom>(100 + id));
      clients.push_back(Client::Create(id, params, rngs[id].get()).value());
      ASSERT_TRUE(server->ReceiveAdvertise(*clients[id]->Advertise()).ok());
    }
    StatusOr<AdvertiseBroadcast> u1 = server->CloseAdvertise();
    ASSERT_TRUE(u1.ok());
    for (auto& c : clients) {
      ASSERT_TRUE(server->ReceiveShareKeys(*c->ShareKeys(*u1)).ok());
    }
    routed = *server->CloseShareKeys();
    for (uint32_t id = 0; id < 2; ++id) {
      StatusOr<MaskedInputMsg> m = clients[id]->MaskedInput(
          std::vector<uint32_t>(8, id + 1), routed[id]);
      ASSERT_TRUE(m.ok()) << m.status().ToString();
      ASSERT_TRUE(server->ReceiveMaskedInput(*m).ok());
    }
    request = *server->CloseMaskedInput();
    ASSERT_EQ(request.survivors, Ids({0, 1}));
    ASSERT_EQ(request.dropped, Ids({2}));
  }
};

TEST(SecAggTest, ClientRefusesToRevealBothSharesOfOnePeer) {
  HalfSession h;
  ASSERT_NO_FATAL_FAILURE(h.Start());
  UnmaskRequest both = h.request;
  both.survivors = {0, 1, 2};  // 2 both survivor and dropped
  StatusOr<UnmaskMsg> refused = h.clients[0]->Unmask(both);
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.status().code(), StatusCode::kInvalidArgument);
  EXPECT_TRUE(Contains(refused.status(), "both"))
      << refused.status().ToString();
  EXPECT_TRUE(Contains(refused.status(), "client 2"));

  UnmaskRequest self_dropped = h.request;  // names client 0 dropped
  self_dropped.survivors = {1, 2};
  self_dropped.dropped = {0};
  EXPECT_FALSE(h.clients[0]->Unmask(self_dropped).ok());
  UnmaskRequest partial = h.request;  // leaves client 2 out
  partial.dropped = {};
  EXPECT_FALSE(h.clients[0]->Unmask(partial).ok());
  UnmaskRequest other_session = h.request;
  other_session.session_id = 43;
  EXPECT_FALSE(h.clients[0]->Unmask(other_session).ok());

  // Refusals change nothing: the honest request is answered, once.
  StatusOr<UnmaskMsg> ok = h.clients[0]->Unmask(h.request);
  ASSERT_TRUE(ok.ok()) << ok.status().ToString();
  EXPECT_EQ(ok->shares.size(), 3u);
  StatusOr<UnmaskMsg> again = h.clients[0]->Unmask(h.request);
  ASSERT_FALSE(again.ok());
  EXPECT_EQ(again.status().code(), StatusCode::kFailedPrecondition);
  EXPECT_TRUE(Contains(again.status(), "second")) << again.status().ToString();

  ASSERT_TRUE(h.server->ReceiveUnmask(*ok).ok());
  ASSERT_TRUE(h.server->ReceiveUnmask(*h.clients[1]->Unmask(h.request)).ok());
  StatusOr<std::vector<uint32_t>> sum = h.server->Finish();
  ASSERT_TRUE(sum.ok()) << sum.status().ToString();
  EXPECT_EQ(*sum, std::vector<uint32_t>(8, 1 + 2));
}

TEST(SecAggTest, ServerRejectsInvalidMessagesAndKeepsGoing) {
  HalfSession h;
  ASSERT_NO_FATAL_FAILURE(h.Start());
  // A late masked input, in the Unmasking round.
  MaskedInputMsg late;
  late.session_id = 42;
  late.sender = 2;
  late.masked.assign(8, 0);
  Status s = h.server->ReceiveMaskedInput(late);
  EXPECT_EQ(s.code(), StatusCode::kFailedPrecondition) << s.ToString();
  StatusOr<UnmaskMsg> a0 = h.clients[0]->Unmask(h.request);
  ASSERT_TRUE(a0.ok());
  UnmaskMsg wrong_session = *a0;
  wrong_session.session_id = 7;
  EXPECT_FALSE(h.server->ReceiveUnmask(wrong_session).ok());
  UnmaskMsg missing = *a0;
  missing.shares.pop_back();
  EXPECT_FALSE(h.server->ReceiveUnmask(missing).ok());
  UnmaskMsg wrong_kind = *a0;
  wrong_kind.shares[0].kind = ShareKind::kMaskingKey;  // s_0^SK: refused
  EXPECT_FALSE(h.server->ReceiveUnmask(wrong_kind).ok());
  UnmaskMsg from_dropped = *a0;
  from_dropped.sender = 2;
  EXPECT_FALSE(h.server->ReceiveUnmask(from_dropped).ok());
  ASSERT_TRUE(h.server->ReceiveUnmask(*a0).ok());
  EXPECT_FALSE(h.server->ReceiveUnmask(*a0).ok());  // twice
  // Only one answer so far: t = 2.
  StatusOr<std::vector<uint32_t>> early = h.server->Finish();
  ASSERT_FALSE(early.ok());
  EXPECT_TRUE(Contains(early.status(), "too many dropouts"));
  // A late answer still completes the session.
  ASSERT_TRUE(h.server->ReceiveUnmask(*h.clients[1]->Unmask(h.request)).ok());
  StatusOr<std::vector<uint32_t>> sum = h.server->Finish();
  ASSERT_TRUE(sum.ok()) << sum.status().ToString();
  EXPECT_EQ(*sum, std::vector<uint32_t>(8, 3));
}

TEST(SecAggTest, ServerRejectsWrongLengthAndDuplicates) {
  Params p;
  p.num_clients = 3;
  p.vector_length = 4;
  p.session_id = 9;
  std::unique_ptr<Server> server = Server::Create(p).value();
  SeededRandom rng(5);
  std::unique_ptr<Client> c = Client::Create(0, p, &rng).value();
  AdvertiseMsg adv = *c->Advertise();
  ASSERT_TRUE(server->ReceiveAdvertise(adv).ok());
  EXPECT_FALSE(server->ReceiveAdvertise(adv).ok());
  adv.sender = 5;
  EXPECT_FALSE(server->ReceiveAdvertise(adv).ok());
  // Only one client advertised: closing fails, and can be retried later.
  StatusOr<AdvertiseBroadcast> early = server->CloseAdvertise();
  EXPECT_EQ(early.status().code(), StatusCode::kFailedPrecondition);
}

TEST(SecAggTest, TamperedShareCiphertextFailsAuthentication) {
  Scenario sc;
  sc.tamper_routed = [](RoutedShares* r) {
    if (r->recipient == 1) r->shares[0].ciphertext[3] ^= 0x40;
  };
  Outcome out = RunSession(sc);
  ASSERT_FALSE(out.status.ok());
  EXPECT_TRUE(Contains(out.status, "authentication failed"))
      << out.status.ToString();
}

TEST(SecAggTest, CorruptedRevealedShareIsDetected) {
  // With spare answers (n = 4, t = 3, all answer) a bad seed share is caught
  // by the consistency check.
  Scenario sc;
  sc.n = 4;
  sc.tamper_unmask = [](UnmaskMsg* m) {
    if (m->sender == 1) m->shares[0].y.data()[kShamirElementBytes - 1] ^= 1;
  };
  Outcome out = RunSession(sc);
  ASSERT_FALSE(out.status.ok());
  EXPECT_EQ(out.status.code(), StatusCode::kCorruption)
      << out.status.ToString();
  // Without spares, a bad share of a dropped client's key is caught by its
  // advertised public key.
  Scenario key;
  key.drop_before_masking = {2};
  key.tamper_unmask = [](UnmaskMsg* m) {
    for (RevealedShare& s : m->shares) {
      if (s.kind == ShareKind::kMaskingKey) s.y.data()[40] ^= 1;
    }
  };
  out = RunSession(key);
  ASSERT_FALSE(out.status.ok());
  EXPECT_TRUE(Contains(out.status, "does not match the public key"))
      << out.status.ToString();
}

// ---- The server's view of one masked input
// ------------------------------------

// Pearson chi-square statistic of byte values against uniform over 256.
double ChiSquareBytes(const std::vector<uint8_t>& bytes) {
  std::vector<double> count(256, 0);
  for (uint8_t b : bytes) count[b] += 1;
  const double expected = bytes.size() / 256.0;
  double chi2 = 0;
  for (double c : count) chi2 += (c - expected) * (c - expected) / expected;
  return chi2;
}

// 255 degrees of freedom: P(chi2 > 377) is about 1e-6 under uniformity
// (Wilson-Hilferty: 255 (1 - 2/2295 + 4.75 sqrt(2/2295))^3 = 377.3). The
// seeds are fixed, so this is deterministic; the threshold says how unlikely
// a failure of a correct implementation would be on another seed.
constexpr double kChiSquare255At1e6 = 377.0;

std::vector<uint8_t> AllBytes(const std::vector<uint32_t>& words) {
  std::vector<uint8_t> out;
  for (uint32_t w : words) {
    for (int i = 0; i < 4; ++i)
      out.push_back(static_cast<uint8_t>(w >> (8 * i)));
  }
  return out;
}
std::vector<uint8_t> TopBytes(const std::vector<uint32_t>& words) {
  std::vector<uint8_t> out;
  for (uint32_t w : words) out.push_back(static_cast<uint8_t>(w >> 24));
  return out;
}

double Pearson(const std::vector<double>& a, const std::vector<double>& b) {
  const double n = a.size();
  double ma = 0, mb = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    ma += a[i] / n;
    mb += b[i] / n;
  }
  double cov = 0, va = 0, vb = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    cov += (a[i] - ma) * (b[i] - mb);
    va += (a[i] - ma) * (a[i] - ma);
    vb += (b[i] - mb) * (b[i] - mb);
  }
  return cov / std::sqrt(va * vb);
}

TEST(SecAggPrivacyTest, MaskedConstantInputLooksUniform) {
  const uint64_t len = 65536;
  Scenario sc;
  sc.length = len;
  sc.fixed_inputs[0] = std::vector<uint32_t>(len, 0x00400000u);
  Outcome out = RunSession(sc);
  ASSERT_TRUE(out.status.ok()) << out.status.ToString();
  EXPECT_EQ(out.sum, out.expected);
  const std::vector<uint32_t>& y = out.masked.at(0);
  // The test has power: the plain input fails it by far.
  EXPECT_GT(ChiSquareBytes(AllBytes(sc.fixed_inputs[0])), 1e5);
  const double all = ChiSquareBytes(AllBytes(y));  // 262144 bytes
  const double top = ChiSquareBytes(TopBytes(y));  // 65536 high bytes
  EXPECT_LT(all, kChiSquare255At1e6);
  EXPECT_LT(top, kChiSquare255At1e6);
  // No word of the input shows through.
  EXPECT_LT(std::count(y.begin(), y.end(), 0x00400000u), 3);
}

TEST(SecAggPrivacyTest, MaskedRampIsUncorrelatedWithTheInput) {
  const uint64_t len = 65536;
  Scenario sc;
  sc.length = len;
  sc.seed = 2;
  std::vector<uint32_t> ramp(len);
  for (uint64_t i = 0; i < len; ++i) ramp[i] = static_cast<uint32_t>(i << 16);
  sc.fixed_inputs[1] = ramp;
  Outcome out = RunSession(sc);
  ASSERT_TRUE(out.status.ok()) << out.status.ToString();
  const std::vector<uint32_t>& y = out.masked.at(1);
  std::vector<double> x_u(len), y_u(len), x_s(len), y_s(len);
  for (uint64_t i = 0; i < len; ++i) {
    x_u[i] = ramp[i];
    y_u[i] = y[i];
    x_s[i] = static_cast<int32_t>(ramp[i]);  // the signed view too
    y_s[i] = static_cast<int32_t>(y[i]);
  }
  // Under independence r ~ N(0, 1/len): 5 standard deviations = 0.0195.
  const double limit = 5 / std::sqrt(static_cast<double>(len));
  EXPECT_LT(std::fabs(Pearson(x_u, y_u)), limit);
  EXPECT_LT(std::fabs(Pearson(x_s, y_s)), limit);
  EXPECT_LT(ChiSquareBytes(AllBytes(y)), kChiSquare255At1e6);
  EXPECT_GT(Pearson(x_u, x_u), 0.999);  // the statistic sees a ramp
}

// ---- Wire format
// --------------------------------------------------------------

// Every message of an n = 3 session, as bytes, by type.
std::map<MessageType, std::vector<uint8_t>> SessionMessages() {
  std::map<MessageType, std::vector<uint8_t>> out;
  HalfSession h;
  h.Start();
  out[MessageType::kRoutedShares] = h.routed[1].Serialize();
  out[MessageType::kUnmaskRequest] = h.request.Serialize();
  out[MessageType::kUnmask] = (*h.clients[1]->Unmask(h.request)).Serialize();
  // The rest from a fresh client (h's clients are past round 1).
  Params p = h.params;
  SeededRandom rng(7);
  std::unique_ptr<Client> c = Client::Create(0, p, &rng).value();
  AdvertiseMsg adv = *c->Advertise();
  out[MessageType::kAdvertise] = adv.Serialize();
  AdvertiseBroadcast u1;
  u1.session_id = p.session_id;
  u1.clients = {adv, adv, adv};
  u1.clients[1].sender = 1;
  u1.clients[1].encryption_key[0] ^= 1;
  u1.clients[1].masking_key[0] ^= 1;
  u1.clients[2].sender = 2;
  u1.clients[2].encryption_key[0] ^= 2;
  u1.clients[2].masking_key[0] ^= 2;
  out[MessageType::kAdvertiseBroadcast] = u1.Serialize();
  StatusOr<ShareKeysMsg> sk = c->ShareKeys(u1);
  EXPECT_TRUE(sk.ok()) << sk.status().ToString();
  if (sk.ok()) out[MessageType::kShareKeys] = sk->Serialize();
  MaskedInputMsg m;
  m.session_id = p.session_id;
  m.sender = 2;
  m.masked = {1, 2, 3, 0xffffffffu};
  out[MessageType::kMaskedInput] = m.Serialize();
  return out;
}

template <typename M>
void CheckWireFormat(const std::vector<uint8_t>& bytes) {
  StatusOr<M> m = FromBytes<M>(bytes);
  ASSERT_TRUE(m.ok()) << m.status().ToString();
  EXPECT_EQ(m->Serialize(), bytes);
  for (size_t len = 0; len < bytes.size(); ++len) {
    StatusOr<M> t = M::Parse(bytes.data(), len);
    ASSERT_FALSE(t.ok()) << "prefix of " << len << " bytes parsed";
    EXPECT_EQ(t.status().code(), StatusCode::kCorruption);
  }
  std::vector<uint8_t> longer = bytes;
  longer.push_back(0);
  StatusOr<M> t = FromBytes<M>(longer);
  ASSERT_FALSE(t.ok());
  // (MaskedInput's length field catches the extra byte first.)
  EXPECT_TRUE(Contains(t.status(), "1 trailing bytes") ||
              Contains(t.status(), "17 bytes follow"))
      << t.status().ToString();
  std::vector<uint8_t> magic = bytes;
  magic[0] = 'X';
  t = FromBytes<M>(magic);
  ASSERT_FALSE(t.ok());
  EXPECT_TRUE(Contains(t.status(), "not a secagg message"));
  std::vector<uint8_t> version = bytes;
  version[4] = 9;
  EXPECT_TRUE(Contains(FromBytes<M>(version).status(), "this build reads 1"));
  std::vector<uint8_t> type = bytes;
  type[5] = type[5] == 1 ? 2 : 1;
  t = FromBytes<M>(type);
  ASSERT_FALSE(t.ok());
  EXPECT_TRUE(Contains(t.status(), "field type")) << t.status().ToString();
}

TEST(SecAggMessageTest, RoundTripAndRejectTruncatedTrailingAndForeign) {
  std::map<MessageType, std::vector<uint8_t>> msgs = SessionMessages();
  ASSERT_EQ(msgs.size(), 7u);
  CheckWireFormat<AdvertiseMsg>(msgs[MessageType::kAdvertise]);
  CheckWireFormat<AdvertiseBroadcast>(msgs[MessageType::kAdvertiseBroadcast]);
  CheckWireFormat<ShareKeysMsg>(msgs[MessageType::kShareKeys]);
  CheckWireFormat<RoutedShares>(msgs[MessageType::kRoutedShares]);
  CheckWireFormat<MaskedInputMsg>(msgs[MessageType::kMaskedInput]);
  CheckWireFormat<UnmaskRequest>(msgs[MessageType::kUnmaskRequest]);
  CheckWireFormat<UnmaskMsg>(msgs[MessageType::kUnmask]);
}

void PutU32(std::vector<uint8_t>* b, size_t at, uint32_t v) {
  for (int i = 0; i < 4; ++i) (*b)[at + i] = static_cast<uint8_t>(v >> (8 * i));
}

TEST(SecAggMessageTest, RejectsOversizedAndGarbledFields) {
  std::map<MessageType, std::vector<uint8_t>> msgs = SessionMessages();
  // Offsets: header 14 bytes; ShareKeys: sender 14, count 18, then entries
  // (sender 22, recipient 26, size 30, ciphertext 34).
  const std::vector<uint8_t>& sk = msgs[MessageType::kShareKeys];
  std::vector<uint8_t> b = sk;
  PutU32(&b, 18, 0xffffffffu);
  Status s = FromBytes<ShareKeysMsg>(b).status();
  EXPECT_TRUE(Contains(s, "exceeds")) << s.ToString();
  b = sk;
  PutU32(&b, 18, 3);  // two entries follow
  s = FromBytes<ShareKeysMsg>(b).status();
  EXPECT_TRUE(Contains(s, "truncated")) << s.ToString();
  b = sk;
  PutU32(&b, 30, 147);
  s = FromBytes<ShareKeysMsg>(b).status();
  EXPECT_TRUE(Contains(s, "shares[0].size")) << s.ToString();
  b = sk;
  PutU32(&b, 22, 1);  // entry from another sender
  s = FromBytes<ShareKeysMsg>(b).status();
  EXPECT_TRUE(Contains(s, "shares[0].sender")) << s.ToString();
  b = sk;
  PutU32(&b, 14, kMaxClients);
  s = FromBytes<ShareKeysMsg>(b).status();
  EXPECT_TRUE(Contains(s, "out of range")) << s.ToString();

  // MaskedInput: sender 14, length u64 at 18.
  b = msgs[MessageType::kMaskedInput];
  PutU32(&b, 18, 0);
  PutU32(&b, 22, 0x100);  // 2^40 words
  s = FromBytes<MaskedInputMsg>(b).status();
  EXPECT_TRUE(Contains(s, "at most")) << s.ToString();
  b = msgs[MessageType::kMaskedInput];
  PutU32(&b, 18, 5);  // 4 words follow
  s = FromBytes<MaskedInputMsg>(b).status();
  EXPECT_TRUE(Contains(s, "16 bytes follow")) << s.ToString();

  // Unmask: sender 14, count 18, owner 22, kind 26.
  b = msgs[MessageType::kUnmask];
  b[26] = 2;
  s = FromBytes<UnmaskMsg>(b).status();
  EXPECT_TRUE(Contains(s, "shares[0].kind")) << s.ToString();

  // UnmaskRequest: survivor count 14.
  b = msgs[MessageType::kUnmaskRequest];
  PutU32(&b, 14, 1000);
  s = FromBytes<UnmaskRequest>(b).status();
  EXPECT_TRUE(Contains(s, "truncated")) << s.ToString();
  EXPECT_FALSE(AdvertiseMsg::Parse(nullptr, 0).ok());
}

}  // namespace
}  // namespace secagg
}  // namespace fedpeft
