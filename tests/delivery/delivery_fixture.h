// Helpers of the delivery tests: a scratch folder per test, copies of the
// shipped model, and a BlockRemote over a LocalModelSource that counts what
// it sends and can damage or cut off the stream.
#ifndef FEDPEFT_TESTS_DELIVERY_DELIVERY_FIXTURE_H_
#define FEDPEFT_TESTS_DELIVERY_DELIVERY_FIXTURE_H_

#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>
#include <sstream>
#include <string>
#include <vector>

#include "delivery/model_fetch.h"
#include "delivery/model_source.h"
#include "tests/process_fixture.h"
#include "tests/test_paths.h"

namespace fedpeft {
namespace delivery_test {

namespace fs = std::filesystem;

inline std::string ReadAll(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

inline void WriteAll(const fs::path& path, const std::string& data) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << data;
}

// A scratch folder per test (tests/process_fixture.h; kept when the test
// fails).
class DeliveryTest : public ProcessTest {
 protected:
  DeliveryTest() : ProcessTest("fedpeft_delivery_") {}

  // A copy of the shipped model (assets/stories260K) at Path(name).
  std::string CopyModel(const std::string& name) {
    const fs::path to = dir_ / name;
    fs::copy(fs::path(kSource) / "assets/stories260K", to,
             fs::copy_options::recursive);
    return to.string();
  }
};

// Serves a model folder like a server would, counting every block sent.
class FakeRemote : public delivery::BlockRemote {
 public:
  FakeRemote(const std::string& model, uint64_t block_size)
      : source_(model, block_size) {}

  StatusOr<delivery::ModelManifest> GetManifest() override {
    ASSIGN_OR_RETURN(auto m, source_.Manifest());
    return *m;
  }
  Status GetBlocks(const std::vector<std::string>& hashes,
                   const OnBlock& on_block) override {
    for (const std::string& h : hashes) {
      {
        std::lock_guard<std::mutex> lock(mu_);
        if (cut_after_ >= 0 && sent_total_ >= cut_after_) {
          cut_after_ = -1;  // the next call goes through
          return Status::Unavailable("fake: connection lost");
        }
      }
      ASSIGN_OR_RETURN(std::string data, source_.ReadBlock(h));
      {
        std::lock_guard<std::mutex> lock(mu_);
        ++sent_[h];
        ++sent_total_;
        if (damage_.count(h) && damage_[h] > 0) {
          --damage_[h];
          data[0] ^= 0x5a;
        }
      }
      RETURN_IF_ERROR(on_block(h, std::move(data)));
    }
    return Status::Ok();
  }

  // The next `times` sends of block `hash` arrive with a flipped byte.
  void Damage(const std::string& hash, int times) { damage_[hash] = times; }
  // The stream breaks (Unavailable) once `n` blocks have been sent in all.
  void CutAfter(int n) { cut_after_ = n; }
  int sent(const std::string& hash) {
    std::lock_guard<std::mutex> lock(mu_);
    return sent_[hash];
  }
  int sent_total() {
    std::lock_guard<std::mutex> lock(mu_);
    return sent_total_;
  }

 private:
  delivery::LocalModelSource source_;
  std::mutex mu_;
  std::map<std::string, int> sent_;    // GUARDED_BY(mu_)
  std::map<std::string, int> damage_;  // GUARDED_BY(mu_)
  int sent_total_ = 0;                 // GUARDED_BY(mu_)
  int cut_after_ = -1;                 // GUARDED_BY(mu_)
};

}  // namespace delivery_test
}  // namespace fedpeft

#endif  // FEDPEFT_TESTS_DELIVERY_DELIVERY_FIXTURE_H_
