#include "delivery/model_manifest.h"

#include <algorithm>
#include <filesystem>
#include <fstream>

#include "delivery/sha256.h"

namespace fedpeft {
namespace delivery {
namespace {

namespace fs = std::filesystem;

uint64_t BlocksFor(uint64_t size, uint64_t block_size) {
  return (size + block_size - 1) / block_size;
}

std::string Shown(const std::string& s) {
  return s.size() <= 80 ? "'" + s + "'" : "'" + s.substr(0, 77) + "...'";
}

// Hashes `path` block by block into `file`.
Status HashFile(const fs::path& path, uint64_t block_size, ManifestFile* file) {
  std::ifstream in(path, std::ios::binary);
  if (!in)
    return Status::IoError("model file '" + path.string() + "': cannot open");
  std::error_code ec;
  const uint64_t size = fs::file_size(path, ec);
  if (ec) {
    return Status::IoError("model file '" + path.string() +
                           "': " + ec.message());
  }
  file->size = size;
  std::string buf;
  for (uint64_t done = 0; done < size;) {
    const uint64_t n = std::min(block_size, size - done);
    buf.resize(n);
    if (!in.read(buf.data(), static_cast<std::streamsize>(n))) {
      return Status::IoError("model file '" + path.string() +
                             "': short read at byte " + std::to_string(done) +
                             " of " + std::to_string(size) +
                             " (changed while hashing?)");
    }
    file->blocks.push_back(Sha256Hex(buf));
    done += n;
  }
  return Status::Ok();
}

}  // namespace

uint64_t ModelManifest::BlockLength(const ManifestFile& file,
                                    size_t index) const {
  const uint64_t start = static_cast<uint64_t>(index) * block_size;
  return std::min(block_size, file.size - start);
}

uint64_t ModelManifest::total_bytes() const {
  uint64_t n = 0;
  for (const ManifestFile& f : files) n += f.size;
  return n;
}

size_t ModelManifest::total_blocks() const {
  size_t n = 0;
  for (const ManifestFile& f : files) n += f.blocks.size();
  return n;
}

Status ValidateRelativePath(const std::string& path, const std::string& field) {
  auto bad = [&](const std::string& why) {
    return Status::InvalidArgument(field + ": " + Shown(path) + " " + why +
                                   "; expected a relative path of plain "
                                   "components such as 'model.safetensors' "
                                   "or 'sub/tokenizer.json'");
  };
  if (path.empty()) return bad("is empty");
  if (path.size() > kMaxPathBytes) {
    return bad("is " + std::to_string(path.size()) + " bytes, more than " +
               std::to_string(kMaxPathBytes));
  }
  if (path.front() == '/') return bad("is absolute");
  for (unsigned char c : path) {
    if (c < 0x20 || c == 0x7f) return bad("has a control character");
    if (c == '\\') return bad("has a backslash");
  }
  size_t start = 0;
  while (start <= path.size()) {
    size_t end = path.find('/', start);
    if (end == std::string::npos) end = path.size();
    const std::string part = path.substr(start, end - start);
    if (part.empty()) return bad("has an empty component");
    if (part == "." || part == "..")
      return bad("has a '" + part + "' component");
    start = end + 1;
  }
  return Status::Ok();
}

std::string CanonicalText(const ModelManifest& m) {
  std::string out = "fedpeft-model-manifest 1\nblock_size " +
                    std::to_string(m.block_size) + "\nentry " + m.entry + "\n";
  for (const ManifestFile& f : m.files) {
    out += "file " + std::to_string(f.size) + " " + f.path + "\n";
    for (const std::string& b : f.blocks) out += "block " + b + "\n";
  }
  return out;
}

std::string ManifestId(const ModelManifest& m) {
  return Sha256Hex(CanonicalText(m));
}

StatusOr<ModelManifest> BuildManifest(const std::string& model_path,
                                      uint64_t block_size) {
  if (block_size < kMinBlockSize || block_size > kMaxBlockSize) {
    return Status::InvalidArgument(
        "model.block_size: must be in [" + std::to_string(kMinBlockSize) +
        ", " + std::to_string(kMaxBlockSize) + "] bytes, got " +
        std::to_string(block_size));
  }
  ModelManifest m;
  m.block_size = block_size;
  std::error_code ec;
  const fs::path root(model_path);
  std::vector<std::pair<std::string, fs::path>> found;  // relative, full
  if (fs::is_regular_file(root, ec)) {
    found.emplace_back(root.filename().string(), root);
    m.entry = root.filename().string();
  } else if (fs::is_directory(root, ec)) {
    fs::recursive_directory_iterator it(
        root, fs::directory_options::follow_directory_symlink, ec);
    for (; !ec && it != fs::recursive_directory_iterator(); it.increment(ec)) {
      const std::string name = it->path().filename().string();
      if (!name.empty() && name[0] == '.') {
        if (it->is_directory(ec)) it.disable_recursion_pending();
        continue;
      }
      if (!it->is_regular_file(ec)) continue;
      found.emplace_back(fs::relative(it->path(), root, ec).generic_string(),
                         it->path());
      if (found.size() > kMaxManifestFiles) {
        return Status::InvalidArgument(
            "model.path '" + model_path + "': more than " +
            std::to_string(kMaxManifestFiles) +
            " files; point it at the model's own folder");
      }
    }
  } else {
    return Status::NotFound("model.path '" + model_path +
                            "': no such file or folder");
  }
  if (ec)
    return Status::IoError("model.path '" + model_path + "': " + ec.message());
  if (found.empty()) {
    return Status::InvalidArgument("model.path '" + model_path +
                                   "': the folder has no files");
  }
  std::sort(found.begin(), found.end());
  for (const auto& [rel, full] : found) {
    ManifestFile f;
    f.path = rel;
    RETURN_IF_ERROR(
        ValidateRelativePath(rel, "model.path '" + model_path + "'"));
    RETURN_IF_ERROR(HashFile(full, block_size, &f));
    m.files.push_back(std::move(f));
  }
  m.id = ManifestId(m);
  RETURN_IF_ERROR(ValidateManifest(m, "the manifest of '" + model_path + "'"));
  return m;
}

Status ValidateManifest(const ModelManifest& m, const std::string& what) {
  auto bad = [&](const std::string& field, const std::string& msg) {
    return Status::InvalidArgument(what + ": " + field + ": " + msg);
  };
  if (m.block_size < kMinBlockSize || m.block_size > kMaxBlockSize) {
    return bad("block_size", "must be in [" + std::to_string(kMinBlockSize) +
                                 ", " + std::to_string(kMaxBlockSize) +
                                 "], got " + std::to_string(m.block_size));
  }
  if (m.files.empty() || m.files.size() > kMaxManifestFiles) {
    return bad("files", "expected 1 to " + std::to_string(kMaxManifestFiles) +
                            " files, got " + std::to_string(m.files.size()));
  }
  uint64_t total = 0;
  size_t blocks = 0;
  for (size_t i = 0; i < m.files.size(); ++i) {
    const ManifestFile& f = m.files[i];
    const std::string field = "files[" + std::to_string(i) + "]";
    RETURN_IF_ERROR(
        ValidateRelativePath(f.path, what + ": " + field + ".path"));
    if (i > 0) {
      const std::string& prev = m.files[i - 1].path;
      if (!(prev < f.path)) {
        return bad(field + ".path",
                   Shown(f.path) + " is not after the previous path " +
                       Shown(prev) + " (paths must be sorted and unique)");
      }
      if (f.path.compare(0, prev.size() + 1, prev + "/") == 0) {
        return bad(field + ".path",
                   Shown(f.path) + " is inside the file " + Shown(prev));
      }
    }
    if (f.size > kMaxModelBytes - total) {
      return bad(field + ".size", "the model exceeds " +
                                      std::to_string(kMaxModelBytes) +
                                      " bytes in all");
    }
    total += f.size;
    const uint64_t want = BlocksFor(f.size, m.block_size);
    if (f.blocks.size() != want) {
      return bad(field + ".blocks",
                 std::to_string(f.blocks.size()) + " blocks for " +
                     std::to_string(f.size) + " bytes in blocks of " +
                     std::to_string(m.block_size) + ", expected " +
                     std::to_string(want));
    }
    blocks += f.blocks.size();
    if (blocks > kMaxManifestBlocks) {
      return bad("files", "more than " + std::to_string(kMaxManifestBlocks) +
                              " blocks in all");
    }
    for (size_t b = 0; b < f.blocks.size(); ++b) {
      if (!IsSha256Hex(f.blocks[b])) {
        return bad(field + ".blocks[" + std::to_string(b) + "]",
                   "expected 64 lowercase hex digits (SHA-256), got " +
                       Shown(f.blocks[b]));
      }
    }
  }
  if (!m.entry.empty()) {
    const bool listed =
        std::any_of(m.files.begin(), m.files.end(),
                    [&](const ManifestFile& f) { return f.path == m.entry; });
    if (!listed) {
      return bad("entry", Shown(m.entry) +
                              " is not one of the files (expected empty for "
                              "a folder, or a file of the manifest)");
    }
  }
  const std::string id = ManifestId(m);
  if (m.id != id) {
    return bad("manifest_id", Shown(m.id) +
                                  " does not match the content (SHA-256 of "
                                  "its canonical text is " +
                                  id + ")");
  }
  return Status::Ok();
}

}  // namespace delivery
}  // namespace fedpeft
