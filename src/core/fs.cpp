// fs.cpp — see fs.h.
#include "subq/core/fs.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>

#include "subq/core/error.h"

namespace subq::fsx {

void fsync_dir(const std::string& dir) {
  int fd = ::open(dir.empty() ? "." : dir.c_str(), O_RDONLY | O_DIRECTORY);
  if (fd < 0) return;
  ::fsync(fd);
  ::close(fd);
}

void write_file_atomic(const std::string& path, const std::string& content) {
  namespace fs = std::filesystem;
  fs::path p(path);
  std::string dir = p.parent_path().string();
  std::random_device rd;
  std::string tmp = path + ".tmp-" + std::to_string(::getpid()) + "-" + std::to_string(rd());
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (fd < 0) throw RuntimeError(str("cannot write ", path, ": ", std::strerror(errno)));
  const char* data = content.data();
  size_t left = content.size();
  while (left > 0) {
    ssize_t n = ::write(fd, data, left);
    if (n < 0) {
      if (errno == EINTR) continue;
      int e = errno;
      ::close(fd);
      ::unlink(tmp.c_str());
      throw RuntimeError(str("cannot write ", path, ": ", std::strerror(e), " (disk full?)"));
    }
    data += n;
    left -= static_cast<size_t>(n);
  }
  if (::fsync(fd) != 0 || ::close(fd) != 0) {
    int e = errno;
    ::unlink(tmp.c_str());
    throw RuntimeError(str("cannot write ", path, ": ", std::strerror(e)));
  }
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    int e = errno;
    ::unlink(tmp.c_str());
    throw RuntimeError(str("cannot rename ", tmp, " to ", path, ": ", std::strerror(e)));
  }
  fsync_dir(dir);
}

std::string read_file(const std::string& path, const std::string& what) {
  if (!std::filesystem::exists(path)) throw InputError(str(what, " not found: ", path));
  std::ifstream f(path, std::ios::binary);
  if (!f) throw InputError(str("cannot read ", what, " ", path, ": ", std::strerror(errno)));
  std::ostringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

}  // namespace subq::fsx
