# cmake -DINPUT=file -DOUTPUT=file.cpp -DNAMESPACE=ns -DFUNCTION=name -P EmbedText.cmake
# Writes a C++ file defining `const std::string& ns::name()` that returns INPUT's bytes (the web
# page compiled into hrmclara_serve). The bytes go in as a raw string literal, split into pieces
# well below compilers' literal limits; a delimiter that cannot occur in the input is chosen.
file(READ "${INPUT}" _text)
set(_delim "HRMCLARA_EMBED")
string(FIND "${_text}" ")${_delim}\"" _clash)
if(NOT _clash EQUAL -1)
  message(FATAL_ERROR "${INPUT} contains the raw-string delimiter )${_delim}\"")
endif()
string(LENGTH "${_text}" _len)
set(_pieces "")
set(_chunk 8000)
set(_pos 0)
while(_pos LESS _len)
  string(SUBSTRING "${_text}" ${_pos} ${_chunk} _piece)
  string(APPEND _pieces "  s.append(R\"${_delim}(${_piece})${_delim}\");\n")
  math(EXPR _pos "${_pos} + ${_chunk}")
endwhile()
file(WRITE "${OUTPUT}.tmp"
"// Generated from ${INPUT} by cmake/EmbedText.cmake; do not edit.\n#include <string>\n\nnamespace ${NAMESPACE} {\n\nconst std::string& ${FUNCTION}() {\n  static const std::string text = [] {\n    std::string s;\n${_pieces}    return s;\n  }();\n  return text;\n}\n\n}  // namespace ${NAMESPACE}\n")
file(RENAME "${OUTPUT}.tmp" "${OUTPUT}")
