# Finds cpp-httplib (Debian: libcpp-httplib-dev, a compiled library) and defines CppHttplib::httplib.
# why: pkg-config, because the library was built with feature macros (OpenSSL, zlib, Brotli) that every user
# of its header must define the same way.
find_package(PkgConfig QUIET)
if(PkgConfig_FOUND)
  pkg_check_modules(PC_CppHttplib QUIET cpp-httplib)
endif()
find_path(CppHttplib_INCLUDE_DIR httplib.h HINTS ${PC_CppHttplib_INCLUDE_DIRS})
find_library(CppHttplib_LIBRARY NAMES cpp-httplib HINTS ${PC_CppHttplib_LIBRARY_DIRS})
include(FindPackageHandleStandardArgs)
find_package_handle_standard_args(CppHttplib REQUIRED_VARS CppHttplib_LIBRARY CppHttplib_INCLUDE_DIR PC_CppHttplib_FOUND
                                  VERSION_VAR PC_CppHttplib_VERSION)
if(CppHttplib_FOUND AND NOT TARGET CppHttplib::httplib)
  add_library(CppHttplib::httplib UNKNOWN IMPORTED)
  set_target_properties(CppHttplib::httplib PROPERTIES IMPORTED_LOCATION "${CppHttplib_LIBRARY}"
                        INTERFACE_INCLUDE_DIRECTORIES "${CppHttplib_INCLUDE_DIR}"
                        INTERFACE_COMPILE_OPTIONS "${PC_CppHttplib_CFLAGS_OTHER}")
endif()
mark_as_advanced(CppHttplib_INCLUDE_DIR CppHttplib_LIBRARY)
