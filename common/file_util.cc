#include "common/file_util.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>

namespace fedpeft {
namespace fs = std::filesystem;

StatusOr<std::string> ReadFileToString(const std::string& path,
                                       uint64_t max_bytes) {
  std::error_code ec;
  if (!fs::exists(path, ec)) {
    return Status::NotFound("file '" + path + "' does not exist");
  }
  if (fs::is_directory(path, ec)) {
    return Status::InvalidArgument("'" + path +
                                   "' is a directory, expected a file");
  }
  uint64_t size = fs::file_size(path, ec);
  if (ec) return Status::IoError("file '" + path + "': " + ec.message());
  if (size > max_bytes) {
    return Status::InvalidArgument(
        "file '" + path + "' is " + std::to_string(size) +
        " bytes, more than the limit of " + std::to_string(max_bytes));
  }
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return Status::IoError("cannot open '" + path +
                           "': " + std::strerror(errno));
  }
  std::string data(size, '\0');
  in.read(data.data(), static_cast<std::streamsize>(size));
  if (static_cast<uint64_t>(in.gcount()) != size) {
    return Status::IoError("short read of '" + path + "'");
  }
  return data;
}

Status WriteFileAtomic(const std::string& path, const std::string& data,
                       unsigned mode) {
  fs::path target(path);
  fs::path dir = target.parent_path();
  if (dir.empty()) dir = ".";
  std::random_device rd;
  std::string tmp =
      path + ".tmp." + std::to_string(::getpid()) + "." + std::to_string(rd());
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC,
                  static_cast<mode_t>(mode));
  if (fd < 0) {
    return Status::IoError("cannot create '" + tmp +
                           "': " + std::strerror(errno));
  }
  const char* p = data.data();
  size_t left = data.size();
  while (left > 0) {
    ssize_t n = ::write(fd, p, left);
    if (n < 0) {
      if (errno == EINTR) continue;
      std::string err = std::strerror(errno);
      ::close(fd);
      ::unlink(tmp.c_str());
      return Status::IoError("write to '" + tmp + "': " + err);
    }
    p += n;
    left -= static_cast<size_t>(n);
  }
  if (::fsync(fd) != 0 || ::close(fd) != 0) {
    std::string err = std::strerror(errno);
    ::unlink(tmp.c_str());
    return Status::IoError("fsync of '" + tmp + "': " + err);
  }
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    std::string err = std::strerror(errno);
    ::unlink(tmp.c_str());
    return Status::IoError("rename '" + tmp + "' -> '" + path + "': " + err);
  }
  int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    ::fsync(dfd);
    ::close(dfd);
  }
  return Status::Ok();
}

Status EnsureDirectory(const std::string& dir) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec || !fs::is_directory(dir)) {
    return Status::IoError("cannot create directory '" + dir +
                           "': " + (ec ? ec.message() : "not a directory"));
  }
  return Status::Ok();
}

bool PathExists(const std::string& path) {
  std::error_code ec;
  return fs::exists(path, ec);
}

bool IsDirectory(const std::string& path) {
  std::error_code ec;
  return fs::is_directory(path, ec);
}

std::string JoinPath(const std::string& a, const std::string& b) {
  return (fs::path(a) / b).string();
}

}  // namespace fedpeft
