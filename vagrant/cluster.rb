# Shared by vagrant/Vagrantfile and vagrant-aws/Vagrantfile: the cluster token and
# the provisioning of one node with provision.sh.
require "securerandom"

module PowerstripFlockerCluster
  CONTROL_NODE = "node1"
  PROVISION_SCRIPT = File.join(__dir__, "provision.sh")

  # The shared secret of the cluster, made once and kept next to the Vagrantfile.
  def self.token(directory)
    path = File.join(directory, ".cluster-token")
    File.write(path, SecureRandom.hex(32)) unless File.exist?(path)
    File.read(path).strip
  end

  def self.provision(node, name, nodes, token)
    node.vm.provision "shell", path: PROVISION_SCRIPT, env: {
      "NODE_NAME" => name,
      "NODE_ADDRESS" => nodes.fetch(name),
      "CONTROL_ADDRESS" => nodes.fetch(CONTROL_NODE),
      "RUN_CONTROL" => name == CONTROL_NODE ? "yes" : "no",
      "CLUSTER_TOKEN" => token,
      "SOURCE" => "/opt/powerstrip-flocker-src",
    }
  end
end
