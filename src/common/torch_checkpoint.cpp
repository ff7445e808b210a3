// A restricted pickle machine for torch.save files. The zip container is read
// with LibTorch's PyTorchStreamReader: "<archive>/data.pkl" is the pickle,
// "<archive>/data/<key>" the raw bytes of each storage, "<archive>/byteorder"
// (torch 2.x writes it; 1.13 does not) their byte order. The pickle may only name the
// globals in `resolve_global`; nothing is ever looked up or run by name.
#include "iris/common/torch_checkpoint.h"

#include "iris/common/error.h"

#include <ATen/Functions.h>
#include <caffe2/serialize/inline_container.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <map>
#include <memory>
#include <unordered_map>

namespace iris {

const std::vector<std::string> kTorchCheckpointStateDictKeys = {"model", "ema_model",
                                                                "model_state_dict", "state_dict"};

namespace {

// What each allowed global stands for.
enum class GlobalRole {
  OrderedDict,        // collections.OrderedDict(): an empty dict
  RebuildTensorV2,    // torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)
  RebuildTensorV3,    // torch._utils._rebuild_tensor_v3(..., dtype, ...): torch 2.x, dtypes without legacy storage names
  RebuildParameter,   // torch._utils._rebuild_parameter(tensor, requires_grad, hooks[, state])
  RebuildFromType,    // torch._tensor._rebuild_from_type_v2(func, type, args, state): tensor subclasses
  StorageType,        // torch.FloatStorage etc.: only named inside a storage's persistent id
  DtypeName,          // torch.float32 etc.: only an argument of _rebuild_tensor_v3
  TensorType,         // torch.Tensor / Parameter: only an argument of _rebuild_from_type_v2
};

struct GlobalInfo {
  GlobalRole role;
  at::ScalarType dtype = at::kFloat;
};

struct Value;
using ValuePtr = std::shared_ptr<Value>;

// The Python values a torch.save pickle can build. Lists, tuples and dicts are
// shared through the memo and mutated in place (APPEND, SETITEM), hence the
// shared pointers.
struct Value {
  enum class Kind { None, Bool, Int, BigInt, Float, String, Bytes, Tuple, List, Dict, Global, Storage, Tensor };
  Kind kind = Kind::None;
  bool boolean = false;
  int64_t integer = 0;
  double real = 0.0;
  std::string text;                                 // String, Bytes; Global: "module.name"
  std::vector<ValuePtr> items;                      // Tuple, List
  std::vector<std::pair<ValuePtr, ValuePtr>> entries;  // Dict, insertion order
  at::Tensor tensor;                                // Storage (1-D, whole storage), Tensor
  GlobalInfo global{GlobalRole::OrderedDict};       // Global

  static ValuePtr make(Kind kind) {
    auto value = std::make_shared<Value>();
    value->kind = kind;
    return value;
  }

  Value() = default;
  Value(const Value&) = delete;
  Value& operator=(const Value&) = delete;
  // Frees nested containers with a work list, not recursion: a hostile pickle
  // nesting lists a million deep must not overflow the stack when freed.
  ~Value() {
    std::vector<ValuePtr> pending;
    take_children(pending);
    while (!pending.empty()) {
      ValuePtr child = std::move(pending.back());
      pending.pop_back();
      if (child && child.use_count() == 1) child->take_children(pending);
    }
  }

 private:
  void take_children(std::vector<ValuePtr>& out) {
    for (auto& item : items) out.push_back(std::move(item));
    for (auto& entry : entries) {
      out.push_back(std::move(entry.first));
      out.push_back(std::move(entry.second));
    }
    items.clear();
    entries.clear();
  }
};

// Names from the file, made safe to print: other bytes become \xNN.
std::string printable(const std::string& text) {
  std::string out;
  for (unsigned char c : text) {
    if (c >= 0x20 && c < 0x7f) {
      out.push_back(static_cast<char>(c));
    } else {
      char escaped[8];
      std::snprintf(escaped, sizeof escaped, "\\x%02x", c);
      out += escaped;
    }
  }
  return out;
}

const char* kind_name(Value::Kind kind) {
  switch (kind) {
    case Value::Kind::None: return "None";
    case Value::Kind::Bool: return "bool";
    case Value::Kind::Int: return "int";
    case Value::Kind::BigInt: return "int";
    case Value::Kind::Float: return "float";
    case Value::Kind::String: return "str";
    case Value::Kind::Bytes: return "bytes";
    case Value::Kind::Tuple: return "tuple";
    case Value::Kind::List: return "list";
    case Value::Kind::Dict: return "dict";
    case Value::Kind::Global: return "global";
    case Value::Kind::Storage: return "storage";
    case Value::Kind::Tensor: return "tensor";
  }
  return "?";
}

bool resolve_global(const std::string& module, const std::string& name, GlobalInfo* info) {
  static const std::map<std::string, at::ScalarType> storage_types = {
      {"FloatStorage", at::kFloat},         {"DoubleStorage", at::kDouble},
      {"HalfStorage", at::kHalf},           {"BFloat16Storage", at::kBFloat16},
      {"LongStorage", at::kLong},           {"IntStorage", at::kInt},
      {"ShortStorage", at::kShort},         {"CharStorage", at::kChar},
      {"ByteStorage", at::kByte},           {"BoolStorage", at::kBool},
      {"ComplexFloatStorage", at::kComplexFloat}, {"ComplexDoubleStorage", at::kComplexDouble},
      {"UntypedStorage", at::kByte}};
  static const std::map<std::string, at::ScalarType> dtype_names = {
      {"float32", at::kFloat}, {"float", at::kFloat},     {"float64", at::kDouble},
      {"double", at::kDouble}, {"float16", at::kHalf},    {"half", at::kHalf},
      {"bfloat16", at::kBFloat16}, {"int64", at::kLong},  {"long", at::kLong},
      {"int32", at::kInt},     {"int", at::kInt},         {"int16", at::kShort},
      {"short", at::kShort},   {"int8", at::kChar},       {"uint8", at::kByte},
      {"bool", at::kBool},     {"complex64", at::kComplexFloat},
      {"complex128", at::kComplexDouble}};

  if (module == "collections" && name == "OrderedDict") {
    info->role = GlobalRole::OrderedDict;
    return true;
  }
  if (module == "torch._utils") {
    if (name == "_rebuild_tensor_v2") info->role = GlobalRole::RebuildTensorV2;
    else if (name == "_rebuild_tensor_v3") info->role = GlobalRole::RebuildTensorV3;
    else if (name == "_rebuild_parameter" || name == "_rebuild_parameter_with_state")
      info->role = GlobalRole::RebuildParameter;
    else return false;
    return true;
  }
  if (module == "torch._tensor" && name == "_rebuild_from_type_v2") {
    info->role = GlobalRole::RebuildFromType;
    return true;
  }
  if ((module == "torch" && name == "Tensor") || (module == "torch._tensor" && name == "Tensor") ||
      (module == "torch.nn.parameter" && name == "Parameter")) {
    info->role = GlobalRole::TensorType;
    return true;
  }
  if (module == "torch") {
    if (auto it = storage_types.find(name); it != storage_types.end()) {
      *info = {GlobalRole::StorageType, it->second};
      return true;
    }
    if (auto it = dtype_names.find(name); it != dtype_names.end()) {
      *info = {GlobalRole::DtypeName, it->second};
      return true;
    }
  }
  return false;
}

// The storages of the archive, loaded once each so that tensors sharing a
// storage in Python share it here.
class StorageTable {
 public:
  StorageTable(caffe2::serialize::PyTorchStreamReader& reader, std::string path)
      : reader_(reader), path_(std::move(path)) {
    if (reader_.hasRecord("byteorder")) {
      auto [data, size] = reader_.getRecord("byteorder");
      std::string order(static_cast<const char*>(data.get()), size);
      if (order == "big") {
        big_endian_ = true;
      } else if (order != "little") {
        throw Error(path_, "unknown byteorder record '" + printable(order) + "'");
      }
    }
  }

  at::Tensor get(const std::string& key, at::ScalarType dtype, int64_t numel) {
    if (key.empty() || key.find('/') != std::string::npos || key.find("..") != std::string::npos)
      throw Error(path_, "bad storage key '" + printable(key) + "'");
    auto it = loaded_.find(key);
    if (it != loaded_.end()) {
      if (it->second.scalar_type() != dtype)
        throw Error(path_, "storage '" + key + "' is used with two dtypes");
      return it->second;
    }
    const std::string record = "data/" + key;
    if (!reader_.hasRecord(record)) throw Error(path_, "missing storage record '" + printable(record) + "'");
    auto [data, size] = reader_.getRecord(record);
    const auto item_size = static_cast<size_t>(c10::elementSize(dtype));
    if (numel < 0 || size % item_size != 0 || size / item_size < static_cast<size_t>(numel))
      throw Error(path_, "storage '" + key + "' has " + std::to_string(size) + " bytes, expected " +
                             std::to_string(numel) + " elements of " + std::to_string(item_size) +
                             " bytes");
    const auto elements = static_cast<int64_t>(size / item_size);
    if (big_endian_ && item_size > 1) {
      auto* bytes = static_cast<unsigned char*>(data.get());
      for (size_t at = 0; at + item_size <= size; at += item_size)
        std::reverse(bytes + at, bytes + at + item_size);
    }
    // The tensor owns the record's buffer: no copy of the weights.
    auto owner = std::make_shared<at::DataPtr>(std::move(data));
    at::Tensor storage = at::from_blob(
        owner->get(), {elements}, [owner](void*) mutable { owner.reset(); },
        at::TensorOptions().dtype(dtype));
    loaded_.emplace(key, storage);
    return storage;
  }

 private:
  caffe2::serialize::PyTorchStreamReader& reader_;
  std::string path_;
  bool big_endian_ = false;
  std::unordered_map<std::string, at::Tensor> loaded_;
};

class Unpickler {
 public:
  Unpickler(const char* data, size_t size, StorageTable& storages, std::string path)
      : data_(reinterpret_cast<const unsigned char*>(data)), size_(size), storages_(storages),
        path_(std::move(path)) {}

  ValuePtr run();

 private:
  [[noreturn]] void fail(const std::string& what) const {
    throw Error(path_, "data.pkl at byte " + std::to_string(opcode_at_) + ": " + what);
  }
  const unsigned char* take(size_t n) {
    if (n > size_ - pos_) fail("truncated pickle");
    const unsigned char* at = data_ + pos_;
    pos_ += n;
    return at;
  }
  uint64_t read_le(size_t n) {
    const unsigned char* bytes = take(n);
    uint64_t value = 0;
    for (size_t i = 0; i < n; ++i) value |= static_cast<uint64_t>(bytes[i]) << (8 * i);
    return value;
  }
  std::string read_string(size_t n) {
    const unsigned char* bytes = take(n);
    return std::string(reinterpret_cast<const char*>(bytes), n);
  }
  std::string read_line() {
    std::string line;
    while (true) {
      char c = static_cast<char>(*take(1));
      if (c == '\n') return line;
      line.push_back(c);
    }
  }

  ValuePtr pop() {
    if (stack_.size() <= stack_floor()) fail("pop from an empty stack");
    ValuePtr top = std::move(stack_.back());
    stack_.pop_back();
    return top;
  }
  ValuePtr& top() {
    if (stack_.size() <= stack_floor()) fail("empty stack");
    return stack_.back();
  }
  size_t stack_floor() const { return marks_.empty() ? 0 : marks_.back(); }
  std::vector<ValuePtr> pop_to_mark() {
    if (marks_.empty()) fail("no MARK on the stack");
    const size_t mark = marks_.back();
    marks_.pop_back();
    std::vector<ValuePtr> items(std::make_move_iterator(stack_.begin() + mark),
                                std::make_move_iterator(stack_.end()));
    stack_.resize(mark);
    return items;
  }

  ValuePtr make_int(int64_t v) {
    auto value = Value::make(Value::Kind::Int);
    value->integer = v;
    return value;
  }
  ValuePtr make_tuple(std::vector<ValuePtr> items) {
    auto value = Value::make(Value::Kind::Tuple);
    value->items = std::move(items);
    return value;
  }
  ValuePtr make_text(Value::Kind kind, std::string text) {
    auto value = Value::make(kind);
    value->text = std::move(text);
    return value;
  }
  ValuePtr make_long(size_t n) {
    if (n > 8) {
      take(n);  // Python ints beyond 64 bits: parsed, not representable, never a tensor field.
      return Value::make(Value::Kind::BigInt);
    }
    uint64_t raw = read_le(n);
    if (n > 0 && n < 8 && (raw >> (8 * n - 1)) & 1) raw |= ~uint64_t{0} << (8 * n);
    return make_int(static_cast<int64_t>(raw));
  }

  ValuePtr make_global(const std::string& module, const std::string& name) {
    GlobalInfo info{GlobalRole::OrderedDict};
    if (!resolve_global(module, name, &info))
      throw Error(path_, "refusing Python global '" + printable(module + "." + name) +
                             "': a torch.save state dict never needs it, and loading it could run code");
    auto value = make_text(Value::Kind::Global, module + "." + name);
    value->global = info;
    return value;
  }
  const GlobalInfo& global_info(const ValuePtr& value) {
    if (!value || value->kind != Value::Kind::Global) fail("expected a global");
    return value->global;
  }

  void set_item(const ValuePtr& dict, ValuePtr key, ValuePtr value) {
    if (dict->kind != Value::Kind::Dict) fail(std::string("SETITEM on a ") + kind_name(dict->kind));
    for (auto& entry : dict->entries) {
      if (same_key(*entry.first, *key)) {
        entry.second = std::move(value);
        return;
      }
    }
    dict->entries.emplace_back(std::move(key), std::move(value));
  }
  static bool same_key(const Value& a, const Value& b) {
    if (a.kind != b.kind) return false;
    switch (a.kind) {
      case Value::Kind::String:
      case Value::Kind::Bytes: return a.text == b.text;
      case Value::Kind::Int: return a.integer == b.integer;
      case Value::Kind::Bool: return a.boolean == b.boolean;
      default: return &a == &b;
    }
  }

  int64_t as_int(const ValuePtr& value, const char* what) {
    if (value->kind == Value::Kind::Int) return value->integer;
    if (value->kind == Value::Kind::Bool) return value->boolean ? 1 : 0;
    fail(std::string(what) + " must be an int, not " + kind_name(value->kind));
  }
  std::vector<int64_t> as_int_tuple(const ValuePtr& value, const char* what) {
    if (value->kind != Value::Kind::Tuple && value->kind != Value::Kind::List)
      fail(std::string(what) + " must be a tuple, not " + kind_name(value->kind));
    std::vector<int64_t> out;
    for (const auto& item : value->items) out.push_back(as_int(item, what));
    return out;
  }

  ValuePtr persistent_load(const ValuePtr& pid);
  ValuePtr rebuild_tensor(const std::vector<ValuePtr>& args, bool has_dtype);
  ValuePtr call(const ValuePtr& callable, const ValuePtr& args);

  const unsigned char* data_;
  size_t size_;
  size_t pos_ = 0;
  size_t opcode_at_ = 0;
  StorageTable& storages_;
  std::string path_;
  std::vector<ValuePtr> stack_;
  std::vector<size_t> marks_;
  std::unordered_map<uint64_t, ValuePtr> memo_;
};

// torch.save's persistent ids: ('storage', <StorageType>, key, location, numel).
ValuePtr Unpickler::persistent_load(const ValuePtr& pid) {
  if (pid->kind != Value::Kind::Tuple || pid->items.size() != 5 ||
      pid->items[0]->kind != Value::Kind::String || pid->items[0]->text != "storage")
    fail("unsupported persistent id (expected ('storage', type, key, location, numel))");
  const GlobalInfo& type = global_info(pid->items[1]);
  if (type.role != GlobalRole::StorageType) fail("persistent id names no storage type");
  if (pid->items[2]->kind != Value::Kind::String) fail("storage key must be a str");
  const int64_t numel = as_int(pid->items[4], "storage numel");
  auto value = Value::make(Value::Kind::Storage);
  value->tensor = storages_.get(pid->items[2]->text, type.dtype, numel);
  return value;
}

// _rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks[, metadata]);
// _v3 adds the dtype after hooks and stores bytes in an untyped storage.
ValuePtr Unpickler::rebuild_tensor(const std::vector<ValuePtr>& args, bool has_dtype) {
  if (args.size() < 4) fail("_rebuild_tensor needs at least 4 arguments");
  if (args[0]->kind != Value::Kind::Storage) fail("_rebuild_tensor: first argument is not a storage");
  at::Tensor storage = args[0]->tensor;
  if (has_dtype) {
    if (args.size() < 7) fail("_rebuild_tensor_v3 needs 7 arguments");
    const GlobalInfo& dtype = global_info(args[6]);
    if (dtype.role != GlobalRole::DtypeName) fail("_rebuild_tensor_v3: argument 7 is not a dtype");
    if (storage.scalar_type() != dtype.dtype) {
      const int64_t item = static_cast<int64_t>(c10::elementSize(dtype.dtype));
      const int64_t bytes = storage.numel() * storage.element_size();
      if (bytes % item != 0) fail("_rebuild_tensor_v3: storage size is not a multiple of the dtype");
      storage = storage.view(dtype.dtype);
    }
  }
  const int64_t offset = as_int(args[1], "storage offset");
  const std::vector<int64_t> sizes = as_int_tuple(args[2], "size");
  const std::vector<int64_t> strides = as_int_tuple(args[3], "stride");
  if (sizes.size() != strides.size()) fail("size and stride have different lengths");
  // Bounds check: a damaged or hostile file must not make as_strided read past the storage.
  int64_t last = offset;
  bool empty = false;
  for (size_t d = 0; d < sizes.size(); ++d) {
    if (sizes[d] < 0 || strides[d] < 0) fail("negative size or stride");
    if (sizes[d] == 0) empty = true;
    else last += (sizes[d] - 1) * strides[d];
  }
  if (offset < 0 || (!empty && last >= storage.numel()))
    fail("tensor reaches past its storage (offset " + std::to_string(offset) + ", storage numel " +
         std::to_string(storage.numel()) + ")");
  auto value = Value::make(Value::Kind::Tensor);
  value->tensor = empty ? at::empty(sizes, storage.options()) : storage.as_strided(sizes, strides, offset);
  return value;
}

ValuePtr Unpickler::call(const ValuePtr& callable, const ValuePtr& args) {
  const GlobalInfo& info = global_info(callable);
  if (args->kind != Value::Kind::Tuple) fail("REDUCE arguments are not a tuple");
  const auto& a = args->items;
  switch (info.role) {
    case GlobalRole::OrderedDict:
      if (!a.empty()) fail("collections.OrderedDict called with arguments");
      return Value::make(Value::Kind::Dict);
    case GlobalRole::RebuildTensorV2: return rebuild_tensor(a, false);
    case GlobalRole::RebuildTensorV3: return rebuild_tensor(a, true);
    case GlobalRole::RebuildParameter:
      if (a.empty() || a[0]->kind != Value::Kind::Tensor) fail("_rebuild_parameter without a tensor");
      return a[0];
    case GlobalRole::RebuildFromType: {
      // (func, type, func_args, state): only plain tensor types, only our rebuild functions.
      if (a.size() < 3) fail("_rebuild_from_type_v2 needs 3 arguments");
      if (global_info(a[1]).role != GlobalRole::TensorType) fail("_rebuild_from_type_v2: unknown type");
      return call(a[0], a[2]);
    }
    default: fail("global '" + callable->text + "' is not callable");
  }
}

ValuePtr Unpickler::run() {
  while (true) {
    opcode_at_ = pos_;
    const unsigned char op = *take(1);
    switch (op) {
      case 0x80: take(1); break;  // PROTO
      case 0x95: take(8); break;  // FRAME: frames are inline, the length is only a hint
      case '.': {                 // STOP
        ValuePtr result = pop();
        return result;
      }
      case '(': marks_.push_back(stack_.size()); break;  // MARK
      case '1': pop_to_mark(); break;                     // POP_MARK
      case '0': pop(); break;                             // POP
      case '2': stack_.push_back(top()); break;           // DUP
      case 'N': stack_.push_back(Value::make(Value::Kind::None)); break;
      case 0x88:
      case 0x89: {  // NEWTRUE, NEWFALSE
        auto value = Value::make(Value::Kind::Bool);
        value->boolean = op == 0x88;
        stack_.push_back(value);
        break;
      }
      case 'J': stack_.push_back(make_int(static_cast<int32_t>(read_le(4)))); break;  // BININT
      case 'K': stack_.push_back(make_int(static_cast<int64_t>(read_le(1)))); break;  // BININT1
      case 'M': stack_.push_back(make_int(static_cast<int64_t>(read_le(2)))); break;  // BININT2
      case 0x8a: stack_.push_back(make_long(read_le(1))); break;                      // LONG1
      case 0x8b: {                                                                     // LONG4
        const uint64_t n = read_le(4);
        if (n > size_) fail("truncated pickle");
        stack_.push_back(make_long(n));
        break;
      }
      case 'G': {  // BINFLOAT: big-endian IEEE double
        const unsigned char* bytes = take(8);
        uint64_t bits = 0;
        for (int i = 0; i < 8; ++i) bits = (bits << 8) | bytes[i];
        auto value = Value::make(Value::Kind::Float);
        std::memcpy(&value->real, &bits, sizeof(double));
        stack_.push_back(value);
        break;
      }
      case 'X': stack_.push_back(make_text(Value::Kind::String, read_string(read_le(4)))); break;
      case 0x8c: stack_.push_back(make_text(Value::Kind::String, read_string(read_le(1)))); break;
      case 0x8d: stack_.push_back(make_text(Value::Kind::String, read_string(read_le(8)))); break;
      case 'B': stack_.push_back(make_text(Value::Kind::Bytes, read_string(read_le(4)))); break;
      case 'C': stack_.push_back(make_text(Value::Kind::Bytes, read_string(read_le(1)))); break;
      case 0x8e: stack_.push_back(make_text(Value::Kind::Bytes, read_string(read_le(8)))); break;
      case 'T': stack_.push_back(make_text(Value::Kind::Bytes, read_string(read_le(4)))); break;
      case 'U': stack_.push_back(make_text(Value::Kind::Bytes, read_string(read_le(1)))); break;
      case ')': stack_.push_back(make_tuple({})); break;  // EMPTY_TUPLE
      case 't': stack_.push_back(make_tuple(pop_to_mark())); break;
      case 0x85: {  // TUPLE1
        auto a = pop();
        stack_.push_back(make_tuple({a}));
        break;
      }
      case 0x86: {  // TUPLE2
        auto b = pop();
        auto a = pop();
        stack_.push_back(make_tuple({a, b}));
        break;
      }
      case 0x87: {  // TUPLE3
        auto c = pop();
        auto b = pop();
        auto a = pop();
        stack_.push_back(make_tuple({a, b, c}));
        break;
      }
      case ']': stack_.push_back(Value::make(Value::Kind::List)); break;  // EMPTY_LIST
      case 'l': {                                                          // LIST
        auto list = Value::make(Value::Kind::List);
        list->items = pop_to_mark();
        stack_.push_back(list);
        break;
      }
      case 0x8f: stack_.push_back(Value::make(Value::Kind::List)); break;  // EMPTY_SET, kept as a list
      case 0x91: {                                                         // FROZENSET
        auto list = Value::make(Value::Kind::List);
        list->items = pop_to_mark();
        stack_.push_back(list);
        break;
      }
      case 'a': {  // APPEND
        auto value = pop();
        auto& list = top();
        if (list->kind != Value::Kind::List) fail("APPEND to a " + std::string(kind_name(list->kind)));
        list->items.push_back(std::move(value));
        break;
      }
      case 'e':       // APPENDS
      case 0x90: {    // ADDITEMS
        auto items = pop_to_mark();
        auto& list = top();
        if (list->kind != Value::Kind::List) fail("APPENDS to a " + std::string(kind_name(list->kind)));
        for (auto& item : items) list->items.push_back(std::move(item));
        break;
      }
      case '}': stack_.push_back(Value::make(Value::Kind::Dict)); break;  // EMPTY_DICT
      case 'd': {                                                          // DICT
        auto items = pop_to_mark();
        if (items.size() % 2 != 0) fail("DICT with an odd number of items");
        auto dict = Value::make(Value::Kind::Dict);
        for (size_t i = 0; i < items.size(); i += 2) set_item(dict, items[i], items[i + 1]);
        stack_.push_back(dict);
        break;
      }
      case 's': {  // SETITEM
        auto value = pop();
        auto key = pop();
        set_item(top(), std::move(key), std::move(value));
        break;
      }
      case 'u': {  // SETITEMS
        auto items = pop_to_mark();
        if (items.size() % 2 != 0) fail("SETITEMS with an odd number of items");
        auto& dict = top();
        for (size_t i = 0; i < items.size(); i += 2) set_item(dict, items[i], items[i + 1]);
        break;
      }
      case 'q': memo_[read_le(1)] = top(); break;       // BINPUT
      case 'r': memo_[read_le(4)] = top(); break;       // LONG_BINPUT
      case 0x94: memo_[memo_.size()] = top(); break;    // MEMOIZE
      case 'h':                                          // BINGET
      case 'j': {                                        // LONG_BINGET
        const uint64_t index = read_le(op == 'h' ? 1 : 4);
        auto it = memo_.find(index);
        if (it == memo_.end()) fail("memo entry " + std::to_string(index) + " was never stored");
        stack_.push_back(it->second);
        break;
      }
      case 'c': {  // GLOBAL "module\nname\n"
        std::string module = read_line();
        std::string name = read_line();
        stack_.push_back(make_global(module, name));
        break;
      }
      case 0x93: {  // STACK_GLOBAL
        auto name = pop();
        auto module = pop();
        if (module->kind != Value::Kind::String || name->kind != Value::Kind::String)
          fail("STACK_GLOBAL needs two strings");
        stack_.push_back(make_global(module->text, name->text));
        break;
      }
      case 'R': {  // REDUCE
        auto args = pop();
        auto callable = pop();
        stack_.push_back(call(callable, args));
        break;
      }
      case 'b':  // BUILD: __setstate__ is never run; the state (OrderedDict _metadata) is dropped
        pop();
        top();
        break;
      case 'Q': {  // BINPERSID
        auto pid = pop();
        stack_.push_back(persistent_load(pid));
        break;
      }
      default: {
        char hex[8];
        std::snprintf(hex, sizeof hex, "0x%02x", op);
        fail(std::string("pickle opcode ") + hex + " is not one torch.save emits");
      }
    }
  }
}

ValuePtr find_entry(const Value& dict, const std::string& key) {
  for (const auto& entry : dict.entries)
    if (entry.first->kind == Value::Kind::String && entry.first->text == key) return entry.second;
  return nullptr;
}

}  // namespace

TorchCheckpoint read_torch_checkpoint(const std::string& path, const std::string& prefer) {
  {
    std::ifstream probe(path, std::ios::binary);
    if (!probe) throw Error(path, "cannot open checkpoint");
    char magic[2] = {0, 0};
    probe.read(magic, 2);
    if (magic[0] != 'P' || magic[1] != 'K')
      throw Error(path, "not a zip-format torch.save file (files from torch < 1.6 or saved with "
                        "_use_new_zipfile_serialization=False must be re-saved with a newer torch)");
  }
  std::unique_ptr<caffe2::serialize::PyTorchStreamReader> reader;
  try {
    reader = std::make_unique<caffe2::serialize::PyTorchStreamReader>(path);
  } catch (const c10::Error& e) {
    // what() would append a C++ backtrace; the message alone is what a user needs.
    throw Error(path, std::string("cannot read the torch.save zip container: ") +
                          e.what_without_backtrace());
  } catch (const std::exception& e) {
    throw Error(path, std::string("cannot read the torch.save zip container: ") + e.what());
  }

  ValuePtr root;
  try {
    if (!reader->hasRecord("data.pkl")) throw Error(path, "no data.pkl record: not a torch.save file");
    auto [pickle, pickle_size] = reader->getRecord("data.pkl");
    StorageTable storages(*reader, path);
    Unpickler unpickler(static_cast<const char*>(pickle.get()), pickle_size, storages, path);
    root = unpickler.run();
  } catch (const Error&) {
    throw;
  } catch (const c10::Error& e) {
    throw Error(path, e.what_without_backtrace());
  } catch (const std::exception& e) {
    throw Error(path, e.what());
  }
  if (root->kind != Value::Kind::Dict)
    throw Error(path, std::string("top-level object is not a dict but of type ") + kind_name(root->kind));

  TorchCheckpoint checkpoint;
  const Value* state_dict = root.get();
  std::vector<std::string> candidates;
  if (!prefer.empty()) candidates.push_back(prefer);
  for (const auto& key : kTorchCheckpointStateDictKeys)
    if (key != prefer) candidates.push_back(key);
  for (const auto& key : candidates) {
    ValuePtr entry = find_entry(*root, key);
    if (!entry) {
      if (key == prefer) throw Error(path, "no entry '" + printable(prefer) + "' in the checkpoint");
      continue;
    }
    if (entry->kind != Value::Kind::Dict) {
      // e.g. "ema_model": None, or a bare state dict with a tensor named "model".
      if (key == prefer)
        throw Error(path, "entry '" + printable(key) + "' is not a state dict but of type " +
                              kind_name(entry->kind));
      continue;
    }
    state_dict = entry.get();
    checkpoint.source_key = key;
    break;
  }

  static const std::string kDdpPrefix = "module.";
  for (const auto& [key, value] : state_dict->entries) {
    if (value->kind != Value::Kind::Tensor || key->kind != Value::Kind::String) continue;
    std::string name = key->text;
    if (name.compare(0, kDdpPrefix.size(), kDdpPrefix) == 0) name.erase(0, kDdpPrefix.size());
    checkpoint.tensors.emplace_back(std::move(name), value->tensor);
  }
  if (checkpoint.tensors.empty())
    throw Error(path, checkpoint.source_key.empty()
                          ? std::string("no tensor in the checkpoint")
                          : "no tensor under '" + checkpoint.source_key + "'");
  return checkpoint;
}

}  // namespace iris
