# radio_isolate_module(target): keep the C++ runtime of a Python extension module to itself.
#
# Some toolchains link libstdc++ statically into shared objects (seen on the GPU machine: its
# /opt/gcc/bin/g++ does). Inside a Python process that already has libstdc++.so loaded (numpy and
# torch bring it), the module's static copy then exports its symbols and half of them bind to the
# other copy at load time: the two disagree on the locale facet indices, and the first
# std::ostringstream << double (every error message) calls a wrong virtual and crashes.
# --exclude-libs,ALL makes every symbol that came from a static archive (libstdc++.a, libradio.a)
# local to the module, so it uses one consistent copy; with a shared libstdc++ it changes nothing.
function(radio_isolate_module target)
  if(CMAKE_SYSTEM_NAME STREQUAL "Linux")
    target_link_options(${target} PRIVATE "LINKER:--exclude-libs,ALL")
  endif()
endfunction()
