// fmt's compiled part, built once here. In fmt's header-only mode every file that formats
// compiled fmt's implementation again; Debian ships libfmt only as a shared library, and
// pok8s-init and pok8s-agent are static, so the non-inline functions come from this file:
// <fmt/format-inl.h> defines them, and the explicit instantiations below are the templates that
// fmt's headers declare for the compiled library without defining them.
#include <fmt/format-inl.h>

FMT_BEGIN_NAMESPACE
namespace detail {
template auto dragonbox::to_decimal(float x) noexcept -> dragonbox::decimal_fp<float>;
template auto dragonbox::to_decimal(double x) noexcept -> dragonbox::decimal_fp<double>;
template locale_ref::locale_ref(const std::locale& loc);
template auto locale_ref::get<std::locale>() const -> std::locale;
template auto thousands_sep_impl(locale_ref) -> thousands_sep_result<char>;
template auto decimal_point_impl(locale_ref) -> char;
}  // namespace detail
FMT_END_NAMESPACE
