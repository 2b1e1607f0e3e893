# Shared by vagrant/Vagrantfile and vagrant-aws/Vagrantfile: the cluster token, the
# cluster CA and the control service's certificate, and the provisioning of one node
# with provision.sh.
require "fileutils"
require "openssl"
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

  # {file name => PEM}: the cluster CA and the control service's certificate and key
  # for control_address, made once and kept in directory/.tls-ADDRESS. The control
  # service serves only TLS on the cluster network (units never writes plain HTTP).
  def self.tls(directory, control_address)
    keep = File.join(directory, ".tls-#{control_address}")
    names = %w[cluster-ca.crt control.crt control.key]
    unless names.all? { |name| File.exist?(File.join(keep, name)) }
      FileUtils.mkdir_p(keep, mode: 0o700)
      ca_key = OpenSSL::PKey::RSA.new(2048)
      ca = certificate("cluster-ca", ca_key, nil, ca_key, nil)
      control_key = OpenSSL::PKey::RSA.new(2048)
      control = certificate("control", control_key, ca, ca_key, control_address)
      File.write(File.join(keep, "cluster-ca.crt"), ca.to_pem)
      File.write(File.join(keep, "control.crt"), control.to_pem)
      File.write(File.join(keep, "control.key"), control_key.to_pem, perm: 0o600)
    end
    names.to_h { |name| [name, File.read(File.join(keep, name))] }
  end

  # A certificate for key signed by issuer (self-signed, a CA, when issuer is nil),
  # naming ip in its subjectAltName when given.
  def self.certificate(common_name, key, issuer, issuer_key, ip)
    cert = OpenSSL::X509::Certificate.new
    cert.version = 2
    cert.serial = SecureRandom.random_number(2**64)
    cert.subject = OpenSSL::X509::Name.parse("/CN=#{common_name}")
    cert.issuer = issuer ? issuer.subject : cert.subject
    cert.public_key = key.public_key
    cert.not_before = Time.now - 3600
    cert.not_after = Time.now + (10 * 365 * 86_400)
    extensions = OpenSSL::X509::ExtensionFactory.new
    extensions.subject_certificate = cert
    extensions.issuer_certificate = issuer || cert
    if issuer
      cert.add_extension(extensions.create_extension("basicConstraints", "CA:FALSE", true))
      cert.add_extension(extensions.create_extension("keyUsage",
                                                     "digitalSignature,keyEncipherment", true))
      cert.add_extension(extensions.create_extension("subjectAltName", "IP:#{ip}", false))
    else
      cert.add_extension(extensions.create_extension("basicConstraints", "CA:TRUE", true))
      cert.add_extension(extensions.create_extension("keyUsage", "keyCertSign,cRLSign", true))
    end
    cert.add_extension(extensions.create_extension("subjectKeyIdentifier", "hash", false))
    cert.sign(issuer_key, OpenSSL::Digest.new("SHA256"))
  end

  def self.provision(node, name, nodes, token)
    control = name == CONTROL_NODE
    files = tls(__dir__, nodes.fetch(CONTROL_NODE))
    node.vm.provision "shell", path: PROVISION_SCRIPT, env: {
      "NODE_NAME" => name,
      "NODE_ADDRESS" => nodes.fetch(name),
      "CONTROL_ADDRESS" => nodes.fetch(CONTROL_NODE),
      "RUN_CONTROL" => control ? "yes" : "no",
      "CLUSTER_TOKEN" => token,
      "CLUSTER_CA" => files["cluster-ca.crt"],
      "CONTROL_CERT" => control ? files["control.crt"] : "",
      "CONTROL_KEY" => control ? files["control.key"] : "",
      "SOURCE" => "/opt/powerstrip-flocker-src",
    }
  end
end
