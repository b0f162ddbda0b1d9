// Tuning: each part of a layer (forward, input gradient, weight and position gradients) runs the path that was
// fastest when timed on this device, as cuDNN's benchmark mode picks its algorithms. The first call of each shape
// times every path that applies and the switches allow, then the choice is cached for the process (keyed by
// device, part, dtype, memory formats and sizes). The cost rule of tiled_taps_host.h decides otherwise.
//
// DCLS_CONVERT_CUDA_TUNE: "on"/"1" tunes; "benchmark" follows torch.backends.cudnn.benchmark, except under
// torch.use_deterministic_algorithms(True) or torch.backends.cudnn.deterministic (every path is deterministic, but
// which one wins may differ between processes, so the bits would); unset, "auto", "off" or "0": no tuning. Unset
// is to mean "benchmark" once a GPU run has passed the tuning and small-plane tests (RESULTS.md, twelfth session):
// until then a training script that sets cudnn.benchmark, as timm's does, keeps the cost rule.
// A switch that forces a path on for a part (DCLS_CONVERT_CUDA_MMA, _PLANE, _TF32 naming it) turns tuning off
// for that part; one that keeps a path off removes it from the candidates. The tables' path is timed with every tap between grid cells (4 corners each): what a layer in
// training has once its positions move, not the on-grid taps of a fresh conversion, which would flatter it.
// No tuning while a CUDA graph is being captured (a cached choice still applies).
#pragma once

#include <ATen/ATen.h>
#include <ATen/Context.h>

#include <algorithm>
#include <array>
#include <cstdlib>
#include <functional>
#include <mutex>
#include <sstream>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "dcls_convert/interpolation.h"

namespace dcls_convert {

enum class Path { kPlane, kMma, kTables };

inline const char* path_name(Path p) {
  switch (p) {
    case Path::kPlane: return "plane";
    case Path::kMma: return "mma";
    default: return "tables";
  }
}

inline bool tuning_on() {
  const char* e = std::getenv("DCLS_CONVERT_CUDA_TUNE");
  const std::string v = e == nullptr ? "" : e;
  if (v == "on" || v == "1") return true;
  if (v != "benchmark") return false;
  const auto& ctx = at::globalContext();
  return ctx.benchmarkCuDNN() && !ctx.deterministicAlgorithms() && !ctx.deterministicCuDNN();
}

// What a part's choice depends on: the part (forward, input gradient, or the taps' gradients with those asked),
// the device, the dtype, the layer's sizes and the memory formats of the tensors its kernels read. Plain integers,
// so that a cached lookup costs a hash, not a string (describe() spells it out for tuned_paths()).
enum TunePart : int64_t { kTuneForward, kTuneGradInput, kTuneGradTaps };
struct TuneKey {
  std::array<int64_t, 21> v{};
  bool operator==(const TuneKey& o) const { return v == o.v; }
};
struct TuneKeyHash {
  size_t operator()(const TuneKey& k) const {
    size_t h = 0;
    for (int64_t x : k.v) h = h * 1000003u ^ std::hash<int64_t>()(x);
    return h;
  }
};

inline int64_t memory_format_code(const at::Tensor& t) {
  return t.is_contiguous() ? 0 : t.is_contiguous(at::MemoryFormat::ChannelsLast) ? 1 : 2;
}

// mask: the gradients asked of a kTuneGradTaps part (weight, positions, bias as bits 0-2); x, y: the tensors its
// kernels read (the input and the output or its gradient).
template <typename Args>
TuneKey tune_key(TunePart part, int64_t mask, const Args& a, const at::Tensor& x, const at::Tensor& y) {
  return TuneKey{{part, mask, int64_t(x.device().type()), x.device().index(), int64_t(x.scalar_type()), a.N, a.C,
                  a.H, a.W, a.Ho, a.Wo, a.Lh, a.Lw, a.sh, a.sw, a.ph, a.pw, a.K, a.interp, memory_format_code(x),
                  memory_format_code(y)}};
}

inline std::string describe(const TuneKey& k) {
  const auto& v = k.v;
  static const char* parts[] = {"forward", "grad_input", "grad_taps"};
  static const char* formats[] = {"nchw", "cl", "strided"};
  std::ostringstream s;
  s << parts[v[0]];
  if (v[0] == kTuneGradTaps) s << " " << (v[1] & 1 ? "w" : "") << (v[1] & 2 ? "p" : "") << (v[1] & 4 ? "b" : "");
  s << " " << c10::Device(c10::DeviceType(v[2]), c10::DeviceIndex(v[3])) << " " << c10::ScalarType(v[4]) << " N"
    << v[5] << " C" << v[6] << " " << v[7] << "x" << v[8] << "->" << v[9] << "x" << v[10] << " window " << v[11]
    << "x" << v[12] << " stride " << v[13] << "x" << v[14] << " padding " << v[15] << "x" << v[16] << " K" << v[17]
    << (v[18] == kBilinear ? " bilinear" : " nearest") << " " << formats[v[19]] << " " << formats[v[20]];
  return s.str();
}

// The process's tuned choices.
class PathCache {
 public:
  bool find(const TuneKey& key, Path* p) {
    std::lock_guard<std::mutex> lock(mu_);
    const auto it = map_.find(key);
    if (it == map_.end()) return false;
    *p = it->second;
    return true;
  }
  void store(const TuneKey& key, Path p) {
    std::lock_guard<std::mutex> lock(mu_);
    map_[key] = p;
  }
  std::vector<std::string> list() {
    std::lock_guard<std::mutex> lock(mu_);
    std::vector<std::string> r;
    for (const auto& kv : map_) r.push_back(describe(kv.first) + " -> " + path_name(kv.second));
    std::sort(r.begin(), r.end());
    return r;
  }
  void clear() {
    std::lock_guard<std::mutex> lock(mu_);
    map_.clear();
  }

 private:
  std::mutex mu_;
  std::unordered_map<TuneKey, Path, TuneKeyHash> map_;
};

inline PathCache& path_cache() {
  static PathCache cache;
  return cache;
}
inline std::vector<std::string> tuned_paths() { return path_cache().list(); }
inline void clear_tuned_paths() { path_cache().clear(); }

// How a part picks its path: by the cost rule (kRule), from the cache (kCached: only that path is planned), or by
// timing every allowed path that applies (kTune).
struct PathSelect {
  enum Mode { kRule, kCached, kTune } mode = kRule;
  Path cached = Path::kTables;
  TuneKey key;
  // Under the cost rule a path is planned only where the ones before it (plane, mma) did not apply.
  bool after(bool earlier_ok) const { return mode != kRule || !earlier_ok; }
};

// forced(): a switch forces a path for this part; key(): the part's TuneKey; may_tune(): no CUDA graph is being
// captured on the current stream; allows(path): the switches leave path a candidate (read at every call, so a
// cached choice that a switch has since turned off gives way to the cost rule). None is asked unless tuning is on.
template <typename ForcedFn, typename KeyFn, typename MayTuneFn, typename AllowsFn>
PathSelect path_select(ForcedFn forced, KeyFn key, MayTuneFn may_tune, AllowsFn allows) {
  PathSelect s;
  if (!tuning_on() || forced()) return s;
  const TuneKey k = key();
  if (path_cache().find(k, &s.cached)) {
    if (allows(s.cached)) s.mode = PathSelect::kCached;
  } else if (may_tune()) {
    s.mode = PathSelect::kTune;
    s.key = k;
  }
  return s;
}

struct Candidate {
  Path path;
  std::function<void()> run;
};

// The fastest candidate by time_ms (a launch policy's timer: CUDA events, or the emulation's kernel costs), stored
// for the key; one candidate is stored untimed, none as the tables (whose plans then fall back, as without tuning,
// so a shape no path applies to is not tuned again). A candidate that runs out of device memory is skipped, as
// cuDNN's benchmark mode skips such algorithms (its workspace, not the layer, was too large); if every timed
// candidate does, nothing is stored.
template <typename TimeMs>
Path tune_paths(const PathSelect& sel, const std::vector<Candidate>& candidates, TimeMs time_ms) {
  Path best = candidates.empty() ? Path::kTables : candidates[0].path;
  bool timed = candidates.size() <= 1;
  double best_ms = 0.0;
  for (size_t i = 0; candidates.size() > 1 && i < candidates.size(); ++i) {
    double ms = 0.0;
    try {
      ms = time_ms(candidates[i].run);
    } catch (const c10::OutOfMemoryError&) {
      continue;
    }
    if (!timed || ms < best_ms) {
      best = candidates[i].path;
      best_ms = ms;
      timed = true;
    }
  }
  if (timed) path_cache().store(sel.key, best);
  return best;
}

// Positions (D, C, 1, K) moved between grid cells: every bilinear tap then makes its 4 corners (2 in 1-D), as in
// training; the tables' path is timed on them. window: the window per axis of the positions' first dimension.
inline at::Tensor between_cells(const at::Tensor& pos, at::IntArrayRef window) {
  auto r = pos.clone();
  for (int64_t d = 0; d < pos.size(0); ++d) {
    const int64_t L = window[d];
    if (L < 2) {
      r[d].zero_();
      continue;
    }
    // grid coordinate u = p + L / 2 (interpolation.h), floored into [0, L - 2], then half a cell on
    auto u = (pos[d] + double(L / 2)).nan_to_num(0.0).floor().clamp(0.0, double(L - 2));
    r[d].copy_(u + (0.5 - double(L / 2)));
  }
  return r;
}

}  // namespace dcls_convert
