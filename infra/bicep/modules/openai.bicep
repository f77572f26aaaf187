// One Azure OpenAI / AI Foundry (AIServices) account with its model deployments, created only when main.bicep's
// openAiAccounts parameter lists a region. Local (key) auth is disabled: the gateway calls it with its managed
// identity (Cognitive Services OpenAI User, granted by openai-access.bicep).

@description('Account name; also its custom subdomain, so the endpoint is https://<name>.openai.azure.com.')
@minLength(2)
@maxLength(64)
param name string

@description('Azure region of the account (may differ from the gateway\'s).')
param location string

@description('Tags applied to the account.')
param tags object = {}

@description('AIServices (AI Foundry resource, serves OpenAI and other models) or OpenAI (Azure OpenAI only).')
@allowed([
  'AIServices'
  'OpenAI'
])
param kind string = 'AIServices'

@description('Model deployments: [{name, model, version, sku, capacity}]; sku e.g. GlobalStandard, Standard, ProvisionedManaged.')
param deployments array

resource account 'Microsoft.CognitiveServices/accounts@2024-10-01' = {
  name: name
  location: location
  tags: tags
  kind: kind
  sku: {
    name: 'S0'
  }
  // Lets the account reach other resources (e.g. storage for Batch files) without keys.
  identity: {
    type: 'SystemAssigned'
  }
  properties: {
    customSubDomainName: name
    disableLocalAuth: true
    publicNetworkAccess: 'Enabled'
    networkAcls: {
      defaultAction: 'Allow'
    }
  }
}

// One at a time: the resource provider rejects concurrent deployment writes on the same account.
@batchSize(1)
resource modelDeployments 'Microsoft.CognitiveServices/accounts/deployments@2024-10-01' = [for d in deployments: {
  parent: account
  name: d.name
  sku: {
    name: d.sku
    capacity: d.capacity
  }
  properties: {
    model: {
      format: 'OpenAI'
      name: d.model
      version: d.version
    }
    versionUpgradeOption: 'OnceNewDefaultVersionAvailable'
  }
}]

@description('Name of the account.')
output name string = account.name

@description('Resource id of the account.')
output id string = account.id

@description('OpenAI endpoint of the account.')
output endpoint string = 'https://${account.properties.customSubDomainName}.openai.azure.com'
