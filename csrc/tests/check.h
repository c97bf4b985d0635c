// Minimal assertion helpers for the C++ unit tests (each test is one executable run by ctest).
#pragma once
#include <ATen/ATen.h>
#include <cstdlib>
#include <functional>
#include <iostream>
#include <string>

#define FASTVAE_EXPECT(cond, msg)                                                        \
  do {                                                                                  \
    if (!(cond)) {                                                                      \
      std::cerr << __FILE__ << ":" << __LINE__ << ": FAILED: " << msg << std::endl;     \
      std::exit(1);                                                                     \
    }                                                                                   \
  } while (0)

inline void expect_close(const at::Tensor& a, const at::Tensor& b, double atol, double rtol, const std::string& what) {
  const bool ok = at::allclose(a, b, rtol, atol);
  if (!ok) {
    std::cerr << what << ": max abs diff " << (a - b).abs().max().item<double>() << std::endl;
  }
  FASTVAE_EXPECT(ok, what);
}

// Expects fn to throw a c10::Error whose message contains `needle`.
inline void expect_error(const std::function<void()>& fn, const std::string& needle, const std::string& what) {
  try {
    fn();
  } catch (const c10::Error& e) {
    const std::string msg = e.what();
    FASTVAE_EXPECT(msg.find(needle) != std::string::npos, what << ": message lacks '" << needle << "': " << msg);
    return;
  }
  FASTVAE_EXPECT(false, what << ": no error raised");
}
