// Placeholder until serialization lands.
namespace radio {}
